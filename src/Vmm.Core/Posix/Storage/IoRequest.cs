using System.Runtime.InteropServices;

namespace Vmm.Core.Posix.Storage;

/// <summary>What an <see cref="IIoEngine"/> is asked to do with the disk.</summary>
public enum IoOperation : byte
{
    /// <summary>preadv(2) into <see cref="IoRequest.Vectors"/> at <see cref="IoRequest.Offset"/>.</summary>
    Read,

    /// <summary>pwritev2(2) from <see cref="IoRequest.Vectors"/>; RWF_DSYNC when <see cref="IoRequest.Dsync"/>.</summary>
    Write,

    /// <summary>fdatasync(2): every write completed before it reaches stable storage (the device's cache is flushed).</summary>
    Flush,

    /// <summary>fallocate(2) FALLOC_FL_ZERO_RANGE | KEEP_SIZE over [Offset, Offset + Length): reads back as zeroes, stays allocated.</summary>
    ZeroRange,

    /// <summary>fallocate(2) FALLOC_FL_PUNCH_HOLE | KEEP_SIZE: reads back as zeroes, storage released (on a block device: zeroes, unmapping allowed).</summary>
    PunchHole,

    /// <summary>ioctl BLKDISCARD on a block device: the range is deallocated; what it reads back as is up to the device.</summary>
    Discard,

    /// <summary>ioctl BLKZEROOUT on a block device: the range reads back as zeroes.</summary>
    ZeroOut,
}

/// <summary>struct iovec: one piece of a scatter/gather list, in host memory.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct IoVector
{
    public byte* Base;
    public nuint Length;

    public IoVector(byte* address, nuint length)
    {
        Base = address;
        Length = length;
    }
}

/// <summary>
/// One operation for an <see cref="IIoEngine"/>. The vectors it points to (and the memory they
/// describe) must stay valid until the operation completes: the kernel may read the iovec array
/// after submission, and transfers into and out of it run until the completion is reaped.
/// </summary>
public unsafe struct IoRequest
{
    public IoOperation Operation;

    /// <summary>Write only: complete once the data is on stable storage (RWF_DSYNC; with O_DIRECT a FUA write).</summary>
    public bool Dsync;

    /// <summary>Byte offset in the disk.</summary>
    public long Offset;

    /// <summary>Bytes, for the range operations (zero, punch, discard).</summary>
    public long Length;

    public IoVector* Vectors;

    public int VectorCount;

    /// <summary>The caller's identity for the request, returned in its <see cref="IoCompletion"/>.</summary>
    public ulong Tag;

    public static IoRequest Read(long offset, IoVector* vectors, int count, ulong tag) =>
        new() { Operation = IoOperation.Read, Offset = offset, Vectors = vectors, VectorCount = count, Tag = tag };

    public static IoRequest Write(long offset, IoVector* vectors, int count, bool dsync, ulong tag) =>
        new() { Operation = IoOperation.Write, Offset = offset, Vectors = vectors, VectorCount = count, Dsync = dsync, Tag = tag };

    public static IoRequest Flush(ulong tag) => new() { Operation = IoOperation.Flush, Tag = tag };

    public static IoRequest Range(IoOperation operation, long offset, long length, ulong tag) =>
        new() { Operation = operation, Offset = offset, Length = length, Tag = tag };
}

/// <summary>A finished operation: its tag, and the bytes moved (&gt;= 0) or <c>-errno</c>.</summary>
public readonly record struct IoCompletion(ulong Tag, int Result);

/// <summary>What an operation's result (bytes, or <c>-errno</c>) means to its caller.</summary>
public static class IoResults
{
    /// <summary>Interrupted or out of resources for the moment (EINTR, EAGAIN): run it again.</summary>
    public static bool IsRetry(int result) => result is -Interop.Errno.EINTR or -Interop.Errno.EAGAIN;

    /// <summary>The disk or its file system has no such operation (EOPNOTSUPP; ENOTTY for an ioctl).</summary>
    public static bool IsUnsupported(int result) => result is -Interop.Errno.EOPNOTSUPP or -Interop.Errno.ENOTTY;

    /// <summary>strerror text for a negative result.</summary>
    public static string Describe(int result) => result < 0 ? Interop.Describe(-result) : $"{result} bytes";
}
