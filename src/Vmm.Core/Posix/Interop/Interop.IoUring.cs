using System.Runtime.InteropServices;

namespace Vmm.Core.Posix;

internal static partial class Interop
{
    /// <summary>
    /// io_uring(7): the three system calls and the structures shared with the kernel, as
    /// include/uapi/linux/io_uring.h declares them. glibc wraps none of the calls, so they go
    /// through syscall(2); the numbers 425-427 are the same on x86-64 and arm64 (io_uring came
    /// after the syscall tables were unified, Linux 5.1). The layouts are fixed-size kernel ABI,
    /// identical on both architectures; tests check every size.
    /// </summary>
    internal static unsafe partial class IoUring
    {
        internal const long SYS_io_uring_setup = 425;
        internal const long SYS_io_uring_enter = 426;
        internal const long SYS_io_uring_register = 427;

        internal const uint IORING_SETUP_CQSIZE = 1U << 3;
        internal const uint IORING_SETUP_CLAMP = 1U << 4;
        internal const uint IORING_SETUP_R_DISABLED = 1U << 6;
        internal const uint IORING_SETUP_SUBMIT_ALL = 1U << 7;
        internal const uint IORING_SETUP_TASKRUN_FLAG = 1U << 9;
        internal const uint IORING_SETUP_SINGLE_ISSUER = 1U << 12;
        internal const uint IORING_SETUP_DEFER_TASKRUN = 1U << 13;

        internal const uint IORING_ENTER_GETEVENTS = 1U << 0;
        internal const uint IORING_ENTER_EXT_ARG = 1U << 3;

        internal const uint IORING_SQ_TASKRUN = 1U << 2;

        internal const uint IORING_CQE_F_MORE = 1U << 1;

        internal const uint IORING_POLL_ADD_MULTI = 1U << 0;

        internal const uint IORING_FEAT_SINGLE_MMAP = 1U << 0;
        internal const uint IORING_FEAT_NODROP = 1U << 1;

        internal const long IORING_OFF_SQ_RING = 0;
        internal const long IORING_OFF_CQ_RING = 0x8000000;
        internal const long IORING_OFF_SQES = 0x10000000;

        internal const byte IORING_OP_NOP = 0;
        internal const byte IORING_OP_READV = 1;
        internal const byte IORING_OP_WRITEV = 2;
        internal const byte IORING_OP_FSYNC = 3;
        internal const byte IORING_OP_POLL_ADD = 6;
        internal const byte IORING_OP_FALLOCATE = 17;
        internal const byte IORING_OP_READ = 22;
        internal const byte IORING_OP_WRITE = 23;

        internal const byte IOSQE_FIXED_FILE = 1 << 0;

        internal const uint IORING_FSYNC_DATASYNC = 1U << 0;

        internal const uint IORING_REGISTER_FILES = 2;
        internal const uint IORING_REGISTER_PROBE = 8;
        internal const uint IORING_REGISTER_ENABLE_RINGS = 12;

        internal const ushort IO_URING_OP_SUPPORTED = 1 << 0;

        /// <summary>struct io_sqring_offsets (40 bytes): where the SQ ring's fields lie in its mapping.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct SqringOffsets
        {
            public uint Head;
            public uint Tail;
            public uint RingMask;
            public uint RingEntries;
            public uint Flags;
            public uint Dropped;
            public uint Array;
            public uint Resv1;
            public ulong UserAddr;
        }

        /// <summary>struct io_cqring_offsets (40 bytes): where the CQ ring's fields lie in its mapping.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct CqringOffsets
        {
            public uint Head;
            public uint Tail;
            public uint RingMask;
            public uint RingEntries;
            public uint Overflow;
            public uint Cqes;
            public uint Flags;
            public uint Resv1;
            public ulong UserAddr;
        }

        /// <summary>struct io_uring_params (120 bytes): in for io_uring_setup, out with the ring geometry.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct Params
        {
            public uint SqEntries;
            public uint CqEntries;
            public uint Flags;
            public uint SqThreadCpu;
            public uint SqThreadIdle;
            public uint Features;
            public uint WqFd;
            public fixed uint Resv[3];
            public SqringOffsets SqOff;
            public CqringOffsets CqOff;
        }

        /// <summary>
        /// struct io_uring_sqe (64 bytes), with the union members this project uses: <c>off</c>,
        /// <c>addr</c>, <c>len</c> and the 32-bit op flags (rw_flags, fsync_flags, poll32_events).
        /// </summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct Sqe
        {
            public byte Opcode;
            public byte Flags;
            public ushort IoPrio;
            public int Fd;
            public ulong Off;
            public ulong Addr;
            public uint Len;
            public uint OpFlags;
            public ulong UserData;
            public ushort BufIndex;
            public ushort Personality;
            public int SpliceFdIn;
            public ulong Addr3;
            public ulong Pad2;
        }

        /// <summary>struct io_uring_cqe (16 bytes; no CQE32).</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct Cqe
        {
            public ulong UserData;
            public int Res;
            public uint Flags;
        }

        /// <summary>struct io_uring_getevents_arg (24 bytes): the IORING_ENTER_EXT_ARG argument, here for its timeout.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct GeteventsArg
        {
            public ulong Sigmask;
            public uint SigmaskSz;
            public uint Pad;
            public ulong Ts;
        }

        /// <summary>struct __kernel_timespec (16 bytes).</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct KernelTimespec
        {
            public long Seconds;
            public long Nanoseconds;
        }

        /// <summary>struct io_uring_probe (16 bytes), followed by <c>ops_len</c> <see cref="ProbeOp"/>s.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct Probe
        {
            public byte LastOp;
            public byte OpsLen;
            public ushort Resv;
            public fixed uint Resv2[3];
        }

        /// <summary>struct io_uring_probe_op (8 bytes).</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct ProbeOp
        {
            public byte Op;
            public byte Resv;
            public ushort Flags;
            public uint Resv2;
        }

        // syscall(2) is variadic; on x86-64 and arm64 Linux integer arguments travel in the same
        // registers either way, and glibc's syscall is an assembly stub that reads them as such.
        [LibraryImport(Libraries.Libc, EntryPoint = "syscall", SetLastError = true)]
        private static partial long Syscall(long number, long a1, long a2, long a3, long a4, long a5, long a6);

        internal static int Setup(uint entries, Params* p) => (int)Syscall(SYS_io_uring_setup, entries, (long)p, 0, 0, 0, 0);

        internal static int Enter(int fd, uint toSubmit, uint minComplete, uint flags, void* arg = null, nuint argSize = 0) =>
            (int)Syscall(SYS_io_uring_enter, fd, toSubmit, minComplete, flags, (long)arg, (long)argSize);

        internal static int Register(int fd, uint opcode, void* arg, uint count) =>
            (int)Syscall(SYS_io_uring_register, fd, opcode, (long)arg, count, 0, 0);
    }
}
