using System.Numerics;

namespace Vmm.Core.Posix.Storage;

/// <summary>
/// The disk behind a block device model: a regular file (a raw image) or a block device
/// (<c>/dev/...</c>), opened for buffered or direct (O_DIRECT) I/O, with the geometry the device
/// reports to its driver and the alignment direct I/O needs. Also runs one
/// <see cref="IoRequest"/> synchronously, for the engines that block a thread on it.
/// </summary>
/// <remarks>
/// A block device is opened O_EXCL, which the kernel turns into an exclusive claim: a second
/// exclusive opener (another back-end, a mount) gets EBUSY. A regular file takes no lock, so
/// tools may inspect an image while it is served.
/// </remarks>
public sealed unsafe class DiskFile : IDisposable
{
    /// <summary>Most vectors one preadv / pwritev takes (UIO_MAXIOV, IOV_MAX).</summary>
    public const int MaxVectors = 1024;

    private const uint DefaultAlignment = 512;
    private const uint MaxProbedAlignment = 4096;

    private DiskFile(string path, SafeFileDescriptor handle, bool readOnly, bool direct, bool blockDevice)
    {
        Path = path;
        Handle = handle;
        ReadOnly = readOnly;
        Direct = direct;
        IsBlockDevice = blockDevice;
    }

    public string Path { get; }

    /// <summary>The open descriptor (owned).</summary>
    public SafeFileDescriptor Handle { get; }

    public bool ReadOnly { get; }

    /// <summary>Opened with O_DIRECT: transfers bypass the host page cache.</summary>
    public bool Direct { get; }

    public bool IsBlockDevice { get; }

    /// <summary>Size in bytes: the file's length, or the device's (BLKGETSIZE64).</summary>
    public long Length { get; private set; }

    /// <summary>
    /// The smallest unit of I/O: offsets and lengths must be multiples of it. A block device's
    /// logical block size (BLKSSZGET); for a file under O_DIRECT the file system's direct-I/O
    /// offset alignment (statx STATX_DIOALIGN, probed where the kernel does not say); 512 for a
    /// file through the page cache.
    /// </summary>
    public uint LogicalBlockSize { get; private set; } = DefaultAlignment;

    /// <summary>The block size the storage writes without a read-modify-write (BLKPBSZGET; a file system's block size).</summary>
    public uint PhysicalBlockSize { get; private set; } = DefaultAlignment;

    /// <summary>The device's optimal transfer size in bytes (BLKIOOPT), 0 when it names none.</summary>
    public uint OptimalIoSize { get; private set; }

    /// <summary>Alignment of memory buffers (addresses and lengths) that direct I/O needs; 1 without O_DIRECT.</summary>
    public uint MemoryAlignment { get; private set; } = 1;

    /// <summary>The file lives in RAM (tmpfs, ramfs): a read or write is a memory copy.</summary>
    public bool IsRamBacked { get; private set; }

    /// <summary>
    /// Opens <paramref name="path"/>. Throws <see cref="PosixException"/> (an IOException) with a
    /// sentence a user can act on when it cannot be opened as asked.
    /// </summary>
    public static DiskFile Open(string path, bool readOnly, bool direct)
    {
        ArgumentNullException.ThrowIfNull(path);
        Interop.FileIo.Statx before = default;
        if (Interop.FileIo.StatX(Interop.FileIo.AT_FDCWD, path, 0, Interop.FileIo.STATX_TYPE | Interop.FileIo.STATX_MODE, &before) != 0)
        {
            throw DescribeOpenError(path, Interop.LastErrno, direct, blockDevice: false);
        }

        ushort type = (ushort)(before.Mode & Interop.FileIo.S_IFMT);
        bool blockDevice = type == Interop.FileIo.S_IFBLK;
        if (!blockDevice && type != Interop.FileIo.S_IFREG)
        {
            throw new IOException($"'{path}' is neither a regular file nor a block device.");
        }

        int flags = (readOnly ? Interop.FileIo.O_RDONLY : Interop.FileIo.O_RDWR) | Interop.FileIo.O_CLOEXEC;
        if (direct)
        {
            flags |= Interop.FileIo.O_DIRECT;
        }

        if (blockDevice)
        {
            // On a block device O_EXCL is an exclusive claim (open(2)): EBUSY while mounted or
            // claimed by another exclusive opener, and a later exclusive opener is refused.
            flags |= Interop.FileIo.O_EXCL;
        }

        int fd = Interop.FileIo.Open(path, flags, 0);
        if (fd < 0)
        {
            throw DescribeOpenError(path, Interop.LastErrno, direct, blockDevice);
        }

        var disk = new DiskFile(path, new SafeFileDescriptor(fd), readOnly, direct, blockDevice);
        try
        {
            disk.ReadGeometry();
            return disk;
        }
        catch
        {
            disk.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Runs <paramref name="request"/> on the calling thread: the bytes moved (&gt;= 0) or
    /// <c>-errno</c>. EINTR is retried; a short transfer is returned as it is.
    /// </summary>
    public int Execute(in IoRequest request)
    {
        using FdLease lease = Handle.Lease();
        int fd = lease.Fd;
        while (true)
        {
            long result = request.Operation switch
            {
                IoOperation.Read when request.VectorCount == 1 => Interop.FileIo.PRead(fd, request.Vectors->Base, request.Vectors->Length, request.Offset),
                IoOperation.Read => Interop.FileIo.PReadV(fd, request.Vectors, request.VectorCount, request.Offset),
                IoOperation.Write when request.VectorCount == 1 && !request.Dsync => Interop.FileIo.PWrite(fd, request.Vectors->Base, request.Vectors->Length, request.Offset),
                IoOperation.Write => Interop.FileIo.PWriteV2(fd, request.Vectors, request.VectorCount, request.Offset, request.Dsync ? Interop.FileIo.RWF_DSYNC : 0),
                IoOperation.Flush => Interop.FileIo.FDataSync(fd),
                IoOperation.ZeroRange => Interop.FileIo.FAllocate(fd, Interop.FileIo.FALLOC_FL_ZERO_RANGE | Interop.FileIo.FALLOC_FL_KEEP_SIZE, request.Offset, request.Length),
                IoOperation.PunchHole => Interop.FileIo.FAllocate(fd, Interop.FileIo.FALLOC_FL_PUNCH_HOLE | Interop.FileIo.FALLOC_FL_KEEP_SIZE, request.Offset, request.Length),
                IoOperation.Discard => RangeIoctl(fd, Interop.FileIo.BLKDISCARD, request.Offset, request.Length),
                IoOperation.ZeroOut => RangeIoctl(fd, Interop.FileIo.BLKZEROOUT, request.Offset, request.Length),
                _ => throw new ArgumentOutOfRangeException(nameof(request), request.Operation, "Unknown I/O operation."),
            };
            if (result >= 0)
            {
                return (int)Math.Min(result, int.MaxValue);
            }

            int errno = Interop.LastErrno;
            if (errno != Interop.Errno.EINTR)
            {
                return -errno;
            }
        }
    }

    public void Dispose() => Handle.Dispose();

    private static int RangeIoctl(int fd, ulong request, long offset, long length)
    {
        ulong* range = stackalloc ulong[2];
        range[0] = (ulong)offset;
        range[1] = (ulong)length;
        return Interop.FileIo.Ioctl(fd, request, range);
    }

    private static IOException DescribeOpenError(string path, int errno, bool direct, bool blockDevice)
    {
        if (errno == Interop.Errno.ENOENT)
        {
            return new FileNotFoundException($"'{path}' does not exist.", path);
        }

        string call = errno switch
        {
            Interop.Errno.EBUSY when blockDevice => $"open '{path}' exclusively (the device is mounted or in use by another program)",
            Interop.Errno.EINVAL when direct => $"open '{path}' with O_DIRECT (its file system does not support direct I/O; use --cache writeback)",
            _ => $"open '{path}'",
        };
        return new PosixException(call, errno);
    }

    private void ReadGeometry()
    {
        using FdLease lease = Handle.Lease();
        int fd = lease.Fd;
        Interop.FileIo.Statx stat = default;
        uint mask = Interop.FileIo.STATX_TYPE | Interop.FileIo.STATX_SIZE | Interop.FileIo.STATX_DIOALIGN;
        if (Interop.FileIo.StatX(fd, string.Empty, Interop.FileIo.AT_EMPTY_PATH, mask, &stat) != 0)
        {
            throw PosixException.FromLastError($"statx '{Path}'");
        }

        bool dioAlignKnown = (stat.Mask & Interop.FileIo.STATX_DIOALIGN) != 0 && stat.DioOffsetAlign != 0;
        if (IsBlockDevice)
        {
            ulong size;
            uint logical;
            uint physical;
            uint optimal;
            if (Interop.FileIo.Ioctl(fd, Interop.FileIo.BLKGETSIZE64, &size) != 0)
            {
                throw PosixException.FromLastError($"ioctl BLKGETSIZE64 '{Path}'");
            }

            if (Interop.FileIo.Ioctl(fd, Interop.FileIo.BLKSSZGET, &logical) != 0)
            {
                throw PosixException.FromLastError($"ioctl BLKSSZGET '{Path}'");
            }

            physical = Interop.FileIo.Ioctl(fd, Interop.FileIo.BLKPBSZGET, &physical) == 0 ? physical : logical;
            optimal = Interop.FileIo.Ioctl(fd, Interop.FileIo.BLKIOOPT, &optimal) == 0 ? optimal : 0;
            Length = (long)Math.Min(size, long.MaxValue);
            LogicalBlockSize = ValidBlockSize(logical, DefaultAlignment);
            PhysicalBlockSize = Math.Max(LogicalBlockSize, ValidBlockSize(physical, LogicalBlockSize));
            OptimalIoSize = optimal;

            // Without STATX_DIOALIGN for block devices (older kernels) the logical block size is
            // a safe memory alignment: the block layer's DMA alignment never exceeds it.
            MemoryAlignment = !Direct ? 1 : dioAlignKnown && stat.DioMemAlign != 0 ? stat.DioMemAlign : LogicalBlockSize;
            return;
        }

        Length = (long)Math.Min(stat.Size, long.MaxValue);
        long* statfs = stackalloc long[32];
        IsRamBacked = Interop.FileIo.FStatFs(fd, statfs) == 0 && statfs[0] is Interop.FileIo.TMPFS_MAGIC or Interop.FileIo.RAMFS_MAGIC;
        if (Direct)
        {
            if (dioAlignKnown)
            {
                LogicalBlockSize = ValidBlockSize(stat.DioOffsetAlign, DefaultAlignment);
                MemoryAlignment = stat.DioMemAlign == 0 ? LogicalBlockSize : stat.DioMemAlign;
            }
            else
            {
                (LogicalBlockSize, MemoryAlignment) = ProbeDirectAlignment(fd);
            }
        }

        // A file system's block size is what it writes without read-modify-write; a value that is
        // no power of two up to 64 KiB (some network file systems report 1 MiB) says nothing useful.
        PhysicalBlockSize = stat.BlkSize is >= DefaultAlignment and <= 65536 && BitOperations.IsPow2(stat.BlkSize)
            ? Math.Max(stat.BlkSize, LogicalBlockSize)
            : LogicalBlockSize;
    }

    /// <summary>
    /// Direct-I/O alignment for kernels without STATX_DIOALIGN (before 6.1), found as QEMU's
    /// raw_probe_alignment does: the smallest read size, then buffer offset, the kernel accepts.
    /// </summary>
    private (uint Offset, uint Memory) ProbeDirectAlignment(int fd)
    {
        byte* buffer = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(2 * MaxProbedAlignment, MaxProbedAlignment);
        try
        {
            uint offset = MaxProbedAlignment;
            for (uint size = DefaultAlignment; size <= MaxProbedAlignment; size *= 2)
            {
                var vector = new IoVector(buffer, size);
                if (Interop.FileIo.PReadV(fd, &vector, 1, 0) >= 0 || Interop.LastErrno != Interop.Errno.EINVAL)
                {
                    offset = size;
                    break;
                }
            }

            uint memory = MaxProbedAlignment;
            for (uint align = DefaultAlignment; align < MaxProbedAlignment; align *= 2)
            {
                var vector = new IoVector(buffer + align, offset);
                if (Interop.FileIo.PReadV(fd, &vector, 1, 0) >= 0 || Interop.LastErrno != Interop.Errno.EINVAL)
                {
                    memory = align;
                    break;
                }
            }

            return (offset, memory);
        }
        finally
        {
            System.Runtime.InteropServices.NativeMemory.AlignedFree(buffer);
        }
    }

    private static uint ValidBlockSize(uint value, uint fallback) =>
        value is >= DefaultAlignment and <= 65536 && BitOperations.IsPow2(value) ? value : fallback;
}
