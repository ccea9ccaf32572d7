using System.Runtime.InteropServices;
using Mono.Unix.Native;

namespace Vmm.Core.Posix;

/// <summary>
/// A MAP_SHARED read/write mapping of part of a file, unmapped when released. Offsets need
/// not be page-aligned: the mapping starts at the page below <c>offset</c> and
/// <see cref="Address"/> points at <c>offset</c> itself, because vhost-user's mmap_offset
/// (vhost-user.rst, "Memory region description") carries no alignment promise.
/// </summary>
public sealed unsafe class SharedMapping : SafeHandle
{
    private static readonly ulong s_pageSize = (ulong)Environment.SystemPageSize;
    private readonly ulong _mappedLength;

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

    public static SharedMapping Map(SafeFileDescriptor fd, ulong offset, ulong length)
    {
        ArgumentOutOfRangeException.ThrowIfZero(length);
        ulong skew = offset % s_pageSize;
        ulong alignedOffset = offset - skew;
        ulong mappedLength = checked(length + skew);
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

    protected override bool ReleaseHandle() => Syscall.munmap(handle, _mappedLength) == 0;
}
