using System.Runtime.InteropServices;
using Mono.Unix.Native;

namespace Vmm.Core.Posix;

/// <summary>
/// A MAP_SHARED read/write mapping of part of a file, unmapped when released. Offsets need
/// not be page-aligned: the mapping starts at the page below <c>offset</c> and
/// <see cref="Address"/> points at <c>offset</c> itself, because vhost-user's mmap_offset
/// (vhost-user.rst, "Memory region description") carries no alignment promise.
/// </summary>
/// <remarks>
/// A mapping of a file that a peer may still shrink can be put under the <see cref="SigbusGuard"/>
/// (<see cref="MapGuarded"/>): a page that vanishes then reads as zeroes instead of killing
/// the process, and the owner is told. The registration is dropped before the range is unmapped.
/// </remarks>
public sealed unsafe class SharedMapping : SafeHandle
{
    private readonly ulong _mappedLength;
    private IDisposable? _guard;

    private SharedMapping(IntPtr mappedBase, ulong mappedLength, ulong skew, ulong length)
        : base(IntPtr.Zero, ownsHandle: true)
    {
        SetHandle(mappedBase);
        _mappedLength = mappedLength;
        Address = (byte*)mappedBase + skew;
        Length = length;
    }

    public override bool IsInvalid => handle == IntPtr.Zero;

    /// <summary>Host address of the first mapped byte of the requested range.</summary>
    public byte* Address { get; }

    public ulong Length { get; }

    /// <summary>True when a SIGBUS in this mapping is repaired rather than fatal.</summary>
    public bool IsGuarded => _guard is not null;

    public static SharedMapping Map(SafeFileDescriptor fd, ulong offset, ulong length) => Map(fd, offset, length, out _);

    /// <summary>
    /// Maps like <see cref="Map(SafeFileDescriptor, ulong, ulong)"/> and guards the mapping:
    /// <paramref name="onTruncated"/> is called (on the guard's thread) after a page of it was
    /// found gone and replaced by zeroes. Throws <see cref="InvalidOperationException"/> when the
    /// guard is not available here (<see cref="SigbusGuard.UnavailableReason"/>).
    /// </summary>
    public static SharedMapping MapGuarded(SafeFileDescriptor fd, ulong offset, ulong length, Action onTruncated)
    {
        ArgumentNullException.ThrowIfNull(onTruncated);
        if (SigbusGuard.UnavailableReason is { } reason)
        {
            throw new InvalidOperationException(reason);
        }

        // hugetlbfs maps whole huge pages: the guard must replace one at a time.
        SharedMapping mapping = Map(fd, offset, length, out ulong granule);
        try
        {
            mapping._guard = SigbusGuard.Register(mapping.handle, mapping._mappedLength, granule, onTruncated);
            return mapping;
        }
        catch
        {
            mapping.Dispose();
            throw;
        }
    }

    private static SharedMapping Map(SafeFileDescriptor fd, ulong offset, ulong length, out ulong pageSize)
    {
        ArgumentNullException.ThrowIfNull(fd);
        ArgumentOutOfRangeException.ThrowIfZero(length);

        // A hugetlbfs file is mapped in whole huge pages, from an offset that is a multiple of one.
        pageSize = MemFd.GetMappingPageSize(fd);
        ulong skew = offset % pageSize;
        ulong alignedOffset = offset - skew;
        ulong mappedLength = checked(length + skew + (pageSize - 1)) & ~(pageSize - 1);
        if (alignedOffset > long.MaxValue || mappedLength > long.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(length), "Mapping range does not fit in off_t.");
        }

        using var lease = fd.Lease();
        IntPtr address = Syscall.mmap(
            IntPtr.Zero,
            mappedLength,
            MmapProts.PROT_READ | MmapProts.PROT_WRITE,
            MmapFlags.MAP_SHARED,
            lease.Fd,
            (long)alignedOffset);
        if (address == Syscall.MAP_FAILED || address == IntPtr.Zero)
        {
            throw new PosixException("mmap", (int)NativeConvert.FromErrno(Stdlib.GetLastError()));
        }

        return new SharedMapping(address, mappedLength, skew, length);
    }

    protected override bool ReleaseHandle()
    {
        // Unregistered first: once unmapped, the range may be mapped again for someone else.
        _guard?.Dispose();
        return Syscall.munmap(handle, _mappedLength) == 0;
    }
}
