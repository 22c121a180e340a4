# An io_uring UDP sender for the throttle tests, in plain Python (ctypes and
# the raw syscalls, no liburing): argv[1] the receiver's port on 127.0.0.1,
# argv[2] "enter" (io_uring_enter with a full ring of IORING_OP_SEND per
# call) or "sqpoll" (an IORING_SETUP_SQPOLL ring: the kernel's SQ thread
# submits, and this process makes no syscall while it polls).
import ctypes, mmap, socket, struct, sys, time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SYS_setup, SYS_enter = 425, 426
IORING_SETUP_SQPOLL, IORING_SQ_NEED_WAKEUP, IORING_ENTER_SQ_WAKEUP = 2, 1, 2
IORING_OP_SEND = 26
ENTRIES = 64
port, mode = int(sys.argv[1]), sys.argv[2]
sqpoll = mode == "sqpoll"

params = ctypes.create_string_buffer(120)
# flags, and for SQPOLL an idle time of 60 s: the SQ thread keeps polling.
struct.pack_into("<III", params, 8, IORING_SETUP_SQPOLL if sqpoll else 0, 0, 60000 if sqpoll else 0)
fd = libc.syscall(SYS_setup, ENTRIES, params)
if fd < 0:
    raise OSError(ctypes.get_errno(), "io_uring_setup")
sq_entries, cq_entries = struct.unpack_from("<II", params, 0)
# io_sqring_offsets: head tail ring_mask ring_entries flags dropped array
sq_head, sq_tail, sq_mask, _, sq_flags, _, sq_array = struct.unpack_from("<7I", params, 40)
# io_cqring_offsets: head tail ring_mask ring_entries overflow cqes
cq_head, cq_tail, _, _, _, cq_cqes = struct.unpack_from("<6I", params, 80)
size = max(sq_array + sq_entries * 4, cq_cqes + cq_entries * 16)
ring = mmap.mmap(fd, size, mmap.MAP_SHARED | 0x8000, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
sqes = mmap.mmap(fd, sq_entries * 64, mmap.MAP_SHARED | 0x8000, mmap.PROT_READ | mmap.PROT_WRITE, offset=0x10000000)

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.connect(("127.0.0.1", port))
payload = ctypes.create_string_buffer(b"killpath-uring", 16)
for i in range(sq_entries):
    struct.pack_into("<I", ring, sq_array + 4 * i, i)
    # opcode flags ioprio fd off addr len msg_flags user_data
    struct.pack_into("<BBHiQQIIQ", sqes, 64 * i, IORING_OP_SEND, 0, 0, sock.fileno(), 0, ctypes.addressof(payload), 16, 0, i)

def u32(off):
    return struct.unpack_from("<I", ring, off)[0]

while True:
    head, tail = u32(sq_head), u32(sq_tail)
    free = sq_entries - ((tail - head) & 0xFFFFFFFF)
    if free:
        struct.pack_into("<I", ring, sq_tail, (tail + free) & 0xFFFFFFFF)
    # Completions are not looked at: the receiver counts what was sent.
    struct.pack_into("<I", ring, cq_head, u32(cq_tail))
    if not sqpoll:
        if libc.syscall(SYS_enter, fd, free, 0, 0, None, 0) < 0 and ctypes.get_errno() not in (4, 11, 16):
            raise OSError(ctypes.get_errno(), "io_uring_enter")
    elif u32(sq_flags) & IORING_SQ_NEED_WAKEUP:
        libc.syscall(SYS_enter, fd, 0, 0, IORING_ENTER_SQ_WAKEUP, None, 0)
    elif not free:
        # A full ring: the SQ thread has not caught up. Spin without a
        # syscall (time.sleep would make one).
        for _ in range(1000):
            pass
