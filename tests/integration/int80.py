# Calls the 32-bit syscall entry (int 0x80) from this 64-bit process, the
# side door of a ceiling charged at the x86_64 syscall functions only.
# argv: "write PATH" appends one byte per call to PATH (i386 write = 4);
# "sendto PORT" sends one datagram per call to 127.0.0.1:PORT (i386
# sendto = 369). Loops for ever. Machine code in a MAP_32BIT page: the
# 32-bit entry truncates pointers to 32 bits, so code and buffers live
# below 4 GiB.
import ctypes, os, socket, struct, sys

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
PROT_RWX, MAP_PRIVATE, MAP_ANON, MAP_32BIT = 7, 0x02, 0x20, 0x40
page = libc.mmap(None, 4096, PROT_RWX, MAP_PRIVATE | MAP_ANON | MAP_32BIT, -1, 0)
if page in (None, ctypes.c_void_p(-1).value) or page >= 1 << 32:
    sys.exit("mmap MAP_32BIT failed")
# long f(nr, a, b, c): eax=nr ebx=a ecx=b edx=c; int 0x80 (rbx saved).
code = bytes([0x53, 0x48, 0x89, 0xF8, 0x48, 0x89, 0xF3, 0x49, 0x89, 0xC8, 0x48, 0x89, 0xD1, 0x4C, 0x89, 0xC2, 0xCD, 0x80, 0x5B, 0xC3])
ctypes.memmove(page, code, len(code))
call = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long)(page)
buf = page + 256
ctypes.memmove(buf, b"x", 1)
if sys.argv[1] == "write":
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    r = call(4, fd, buf, 1)
    if r != 1:
        sys.exit(f"int 0x80 write returned {r} (no IA32 emulation?)")
    while True:
        call(4, fd, buf, 1)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # sockaddr_in for sendto, below 4 GiB too.
    addr = page + 512
    ctypes.memmove(addr, struct.pack("=HH4s8x", socket.AF_INET, socket.htons(int(sys.argv[2])), socket.inet_aton("127.0.0.1")), 16)
    # i386 sendto(fd, buf, len, flags, addr, addrlen): six arguments, more
    # than f takes: argument block for socketcall(SYS_SENDTO = 11) instead.
    args = page + 640
    ctypes.memmove(args, struct.pack("=6I", s.fileno(), buf, 1, 0, addr, 16), 24)
    r = call(102, 11, args, 0)
    if r != 1:
        sys.exit(f"int 0x80 socketcall(sendto) returned {r}")
    while True:
        call(102, 11, args, 0)
