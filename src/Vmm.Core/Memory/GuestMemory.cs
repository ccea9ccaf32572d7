using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using Vmm.Core.Posix;

namespace Vmm.Core.Memory;

/// <summary>
/// Guest RAM as memfd-backed MAP_SHARED regions, so that every region can be handed to a
/// vhost-user back-end. A VMM creates it (<see cref="Create(ulong)"/>); a back-end builds one
/// from the regions it receives (<see cref="AddRegion(ulong, ulong, ulong, SafeFileDescriptor, ulong)"/>).
/// </summary>
/// <remarks>
/// Every access is bounds-checked against one snapshot of the region table; the table is
/// replaced atomically (copy on write) so readers never lock. A removed region is handed back
/// to the caller, who disposes (unmaps) it once no queue can still be using it: the back-end
/// stops its rings before it replaces the table (vhost-user.rst, "REM_MEM_REG").
/// Ring fields are little-endian (virtio 1.2, 2.6 "Split Virtqueues": le16/le32/le64).
/// Memory created here is a memfd sealed against shrinking and growing, so a peer that maps it
/// cannot pull pages from under us. A region received from a peer is sealed against shrinking
/// when its file allows; when it does not, <see cref="UnsealedRegions"/> decides.
/// </remarks>
public sealed unsafe partial class GuestMemory : IDisposable
{
    /// <summary>
    /// The most regions a table may hold. vhost-user back-ends commonly advertise 509 slots
    /// (GET_MAX_MEM_SLOTS, the KVM memslot limit less the ones QEMU keeps for itself).
    /// </summary>
    public const int MaxRegions = 509;

    private readonly object _writeLock = new();
    private volatile GuestMemoryRegion[] _regions = [];
    private bool _disposed;

    /// <summary>Raised after a region was added or removed (the front-end mirrors it to its back-end).</summary>
    public event Action<GuestMemoryChange>? Changed;

    /// <summary>
    /// Raised, on the SIGBUS guard's thread, when a page of a guarded (unsealed) region was found
    /// gone: the peer truncated the file. The page now reads as zeroes here and is no longer
    /// shared; whatever uses the region should be stopped and the peer dropped.
    /// </summary>
    public event Action<GuestMemoryRegion>? Truncated;

    /// <summary>What <see cref="AddRegion(ulong, ulong, ulong, SafeFileDescriptor, ulong)"/> does with a file that can still shrink.</summary>
    public UnsealedMemoryPolicy UnsealedRegions { get; init; } = UnsealedMemoryPolicy.Guard;

    /// <summary>The current regions, ordered by guest-physical address.</summary>
    public IReadOnlyList<GuestMemoryRegion> Regions => _regions;

    /// <summary>Total bytes of guest RAM.</summary>
    public ulong TotalSize
    {
        get
        {
            ulong total = 0;
            foreach (GuestMemoryRegion region in _regions)
            {
                total += region.Size;
            }

            return total;
        }
    }

    /// <summary>A VMM's guest RAM: one memfd region of <paramref name="size"/> bytes at GPA 0.</summary>
    public static GuestMemory Create(ulong size) => Create([new GuestMemoryRange(0, size)]);

    /// <summary>A VMM's guest RAM: one new memfd region per range.</summary>
    public static GuestMemory Create(IEnumerable<GuestMemoryRange> layout)
    {
        ArgumentNullException.ThrowIfNull(layout);
        var memory = new GuestMemory();
        try
        {
            foreach (GuestMemoryRange range in layout)
            {
                memory.AddRegion(range);
            }
        }
        catch
        {
            memory.Dispose();
            throw;
        }

        return memory;
    }

    /// <summary>Adds a new memfd-backed region (memory hot-plug on the VMM side).</summary>
    public GuestMemoryRegion AddRegion(GuestMemoryRange range)
    {
        ValidateRange(range.GuestPhysicalAddress, range.Size);
        SafeFileDescriptor fd = MemFd.Create($"guest-ram-{range.GuestPhysicalAddress:x}", range.Size);
        SharedMapping mapping;
        try
        {
            mapping = SharedMapping.Map(fd, 0, range.Size);
        }
        catch
        {
            fd.Dispose();
            throw;
        }

        var region = new GuestMemoryRegion(range.GuestPhysicalAddress, range.Size, (ulong)mapping.Address, fd, 0, mapping, isSealed: true);
        Insert(region);
        return region;
    }

    /// <summary>
    /// Adds a region received from a front-end: <paramref name="size"/> bytes of <paramref name="fd"/>
    /// starting at <paramref name="fileOffset"/>, at <paramref name="guestPhysicalAddress"/>, known to
    /// the front-end as <paramref name="userAddress"/>. Takes ownership of <paramref name="fd"/>,
    /// also when it throws. Rejects a zero size, overflowing ranges, overlap with an existing region
    /// (by GPA or by user address) and a range beyond the end of the file. The file is sealed
    /// against shrinking where it can be; where it cannot, <see cref="UnsealedRegions"/> decides.
    /// </summary>
    public GuestMemoryRegion AddRegion(ulong guestPhysicalAddress, ulong size, ulong userAddress, SafeFileDescriptor fd, ulong fileOffset)
    {
        ArgumentNullException.ThrowIfNull(fd);
        SharedMapping? mapping = null;
        try
        {
            ValidateRange(guestPhysicalAddress, size);
            if (userAddress + (size - 1) < userAddress)
            {
                throw new GuestMemoryException($"Region user address 0x{userAddress:x} + size 0x{size:x} overflows.");
            }

            if (fileOffset + (size - 1) < fileOffset)
            {
                throw new GuestMemoryException($"Region file offset 0x{fileOffset:x} + size 0x{size:x} overflows.");
            }

            // Sealed first, measured second: once F_SEAL_SHRINK holds, the size read is final.
            bool sealedFile = MemFd.TrySealAgainstShrinking(fd);
            ulong fileSize = MemFd.GetFileSize(fd);
            if (fileOffset > fileSize || size > fileSize - fileOffset)
            {
                throw new GuestMemoryException(
                    $"Region [offset 0x{fileOffset:x}, size 0x{size:x}] lies beyond the end of its file (0x{fileSize:x} bytes).");
            }

            GuestMemoryRegion? region = null;
            if (sealedFile)
            {
                mapping = SharedMapping.Map(fd, fileOffset, size);
            }
            else if (UnsealedRegions == UnsealedMemoryPolicy.Refuse)
            {
                throw new GuestMemoryException(
                    $"Region at 0x{guestPhysicalAddress:x} is backed by {FileDescriptors.Describe(fd)}, which is not sealed against shrinking " +
                    "and cannot be sealed now, and unsealed memory is refused (a memfd with F_SEAL_SHRINK is needed).");
            }
            else if (SigbusGuard.UnavailableReason is { } reason)
            {
                throw new GuestMemoryException(
                    $"Region at 0x{guestPhysicalAddress:x} is backed by {FileDescriptors.Describe(fd)}, which is not sealed against shrinking, " +
                    $"and it cannot be guarded: {reason}.");
            }
            else
            {
                try
                {
                    mapping = SharedMapping.MapGuarded(fd, fileOffset, size, () => OnTruncated(region));
                }
                catch (InvalidOperationException e)
                {
                    // Every guard slot is in use.
                    throw new GuestMemoryException($"Region at 0x{guestPhysicalAddress:x} cannot be guarded: {e.Message}");
                }
            }

            region = new GuestMemoryRegion(guestPhysicalAddress, size, userAddress, fd, fileOffset, mapping, sealedFile);
            Insert(region);
            return region;
        }
        catch
        {
            mapping?.Dispose();
            fd.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Detaches the region that matches exactly (GPA, size and, when given, user address) and
    /// returns it; the caller disposes it once no queue can use it. Null when none matches.
    /// </summary>
    public GuestMemoryRegion? RemoveRegion(ulong guestPhysicalAddress, ulong size, ulong? userAddress = null)
    {
        GuestMemoryRegion? removed = null;
        lock (_writeLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            GuestMemoryRegion[] current = _regions;
            int index = Array.FindIndex(current, r =>
                r.GuestPhysicalAddress == guestPhysicalAddress && r.Size == size &&
                (userAddress is null || r.UserAddress == userAddress.Value));
            if (index < 0)
            {
                return null;
            }

            removed = current[index];
            var next = new GuestMemoryRegion[current.Length - 1];
            Array.Copy(current, 0, next, 0, index);
            Array.Copy(current, index + 1, next, index, current.Length - index - 1);
            _regions = next;
        }

        Changed?.Invoke(new GuestMemoryChange(GuestMemoryChangeKind.Removed, removed));
        return removed;
    }

    /// <summary>Detaches every region and returns them (SET_MEM_TABLE replaces the whole table).</summary>
    public GuestMemoryRegion[] RemoveAll()
    {
        GuestMemoryRegion[] removed;
        lock (_writeLock)
        {
            removed = _regions;
            _regions = [];
        }

        foreach (GuestMemoryRegion region in removed)
        {
            Changed?.Invoke(new GuestMemoryChange(GuestMemoryChangeKind.Removed, region));
        }

        return removed;
    }

    /// <summary>
    /// True when every byte of [address, address + length) is guest RAM, possibly across regions
    /// that follow each other without a gap: a driver may hand over a buffer that straddles two
    /// memory slots (QEMU and qemu-storage-daemon serve such buffers), and copies and scatter/gather
    /// I/O take it piece by piece. Ring areas, which are accessed in place, use <see cref="IsValidRange"/>.
    /// </summary>
    public bool IsMappedRange(ulong address, ulong length)
    {
        if (length == 0)
        {
            return FindRegion(address, 1) is not null;
        }

        if (address + (length - 1) < address)
        {
            return false;
        }

        GuestMemoryRegion[] regions = _regions;
        int index = IndexOf(regions, address);
        while (index >= 0)
        {
            GuestMemoryRegion region = regions[index];
            ulong available = region.LastAddress - address + 1;
            if (available == 0 || length <= available)
            {
                // available == 0: the region reaches the end of the address space.
                return true;
            }

            length -= available;
            address = region.LastAddress + 1;
            index++;
            if (index == regions.Length || regions[index].GuestPhysicalAddress != address)
            {
                return false;
            }
        }

        return false;
    }

    /// <summary>True when [address, address + length) lies inside one region.</summary>
    public bool IsValidRange(ulong address, ulong length) => length == 0 ? FindRegion(address, 1) is not null : FindRegion(address, length) is not null;

    /// <summary>The region holding [address, address + length), or null.</summary>
    public GuestMemoryRegion? FindRegion(ulong address, ulong length)
    {
        GuestMemoryRegion[] regions = _regions;
        int index = IndexOf(regions, address);
        return index >= 0 && regions[index].ContainsGpa(address, length) ? regions[index] : null;
    }

    /// <summary>The index of the region holding <paramref name="address"/>, or -1.</summary>
    private static int IndexOf(GuestMemoryRegion[] regions, ulong address)
    {
        int lo = 0;
        int hi = regions.Length - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            GuestMemoryRegion r = regions[mid];
            if (address < r.GuestPhysicalAddress)
            {
                hi = mid - 1;
            }
            else if (address > r.LastAddress)
            {
                lo = mid + 1;
            }
            else
            {
                return mid;
            }
        }

        return -1;
    }

    /// <summary>
    /// Translates a front-end user (virtual) address to a guest-physical one: vring addresses
    /// in SET_VRING_ADDR are front-end user addresses (vhost-user.rst, "Vring address description").
    /// </summary>
    public bool TryTranslateUserAddress(ulong userAddress, ulong length, out ulong guestPhysicalAddress)
    {
        foreach (GuestMemoryRegion r in _regions)
        {
            if (r.ContainsUserAddress(userAddress, Math.Max(length, 1)))
            {
                guestPhysicalAddress = r.GuestPhysicalAddress + (userAddress - r.UserAddress);
                return true;
            }
        }

        guestPhysicalAddress = 0;
        return false;
    }

    /// <summary>
    /// A writable span over [address, address + length) inside one region. Valid until that region
    /// is removed and disposed; hold it only while the queue using it runs. While writes are
    /// tracked (<see cref="StartLogging"/>) its pages count as written: use
    /// <see cref="GetReadOnlySpan"/> to look without writing.
    /// </summary>
    public Span<byte> GetSpan(ulong address, int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        byte* p = Translate(address, (ulong)length);
        if (_written is not null)
        {
            MarkWritten(address, (ulong)length);
        }

        return new Span<byte>(p, length);
    }

    /// <summary>A read-only span over [address, address + length) inside one region; never counts as a write.</summary>
    public ReadOnlySpan<byte> GetReadOnlySpan(ulong address, int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        return new ReadOnlySpan<byte>(Translate(address, (ulong)length), length);
    }

    /// <summary>Copies guest memory at <paramref name="address"/> into <paramref name="destination"/>; may cross adjacent regions.</summary>
    public void Read(ulong address, Span<byte> destination)
    {
        while (!destination.IsEmpty)
        {
            int chunk = ChunkAt(address, destination.Length, out byte* p);
            new ReadOnlySpan<byte>(p, chunk).CopyTo(destination);
            destination = destination[chunk..];
            address += (ulong)chunk;
        }
    }

    /// <summary>Copies <paramref name="source"/> into guest memory at <paramref name="address"/>; may cross adjacent regions.</summary>
    public void Write(ulong address, ReadOnlySpan<byte> source)
    {
        ulong start = address;
        ulong length = (ulong)source.Length;
        while (!source.IsEmpty)
        {
            int chunk = ChunkAt(address, source.Length, out byte* p);
            source[..chunk].CopyTo(new Span<byte>(p, chunk));
            source = source[chunk..];
            address += (ulong)chunk;
        }

        // After the store: a harvest between a mark and its store would lose the page.
        if (_written is not null)
        {
            MarkWritten(start, length);
        }
    }

    /// <summary>Fills [address, address + length) with zeroes.</summary>
    public void Clear(ulong address, ulong length)
    {
        ulong start = address;
        ulong total = length;
        while (length > 0)
        {
            int chunk = ChunkAt(address, (int)Math.Min(length, int.MaxValue), out byte* p);
            new Span<byte>(p, chunk).Clear();
            length -= (ulong)chunk;
            address += (ulong)chunk;
        }

        if (_written is not null)
        {
            MarkWritten(start, total);
        }
    }

    public byte ReadByte(ulong address) => *Translate(address, 1);

    public void WriteByte(ulong address, byte value)
    {
        *Translate(address, 1) = value;
        Written(address, 1);
    }

    public ushort ReadUInt16(ulong address) => BinaryPrimitives.ReadUInt16LittleEndian(new ReadOnlySpan<byte>(Translate(address, 2), 2));

    public uint ReadUInt32(ulong address) => BinaryPrimitives.ReadUInt32LittleEndian(new ReadOnlySpan<byte>(Translate(address, 4), 4));

    public ulong ReadUInt64(ulong address) => BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(Translate(address, 8), 8));

    public void WriteUInt16(ulong address, ushort value)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(new Span<byte>(Translate(address, 2), 2), value);
        Written(address, 2);
    }

    public void WriteUInt32(ulong address, uint value)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(new Span<byte>(Translate(address, 4), 4), value);
        Written(address, 4);
    }

    public void WriteUInt64(ulong address, ulong value)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(new Span<byte>(Translate(address, 8), 8), value);
        Written(address, 8);
    }

    /// <summary>
    /// Reads a ring index with acquire semantics: later reads (the descriptors it publishes)
    /// cannot move before it. Ring indices are naturally aligned le16 (virtio 1.2, 2.7.6, 2.7.8).
    /// </summary>
    public ushort ReadUInt16Acquire(ulong address)
    {
        ushort* p = (ushort*)Translate(address, 2);
        ushort raw = Volatile.Read(ref *p);
        return BitConverter.IsLittleEndian ? raw : BinaryPrimitives.ReverseEndianness(raw);
    }

    /// <summary>
    /// Publishes a ring index with release semantics: earlier writes (used elements, descriptor
    /// contents) become visible before it.
    /// </summary>
    public void WriteUInt16Release(ulong address, ushort value)
    {
        ushort* p = (ushort*)Translate(address, 2);
        Volatile.Write(ref *p, BitConverter.IsLittleEndian ? value : BinaryPrimitives.ReverseEndianness(value));
        Written(address, 2);
    }

    /// <summary>
    /// A full barrier: orders a store before a later load, which acquire/release does not.
    /// Needed between publishing an index and reading the peer's event-suppression field
    /// (virtio 1.2, 2.7.10: otherwise both sides can miss a notification).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void FullFence() => Interlocked.MemoryBarrier();

    public void Dispose()
    {
        GuestMemoryRegion[] regions;
        lock (_writeLock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            regions = _regions;
            _regions = [];
        }

        foreach (GuestMemoryRegion region in regions)
        {
            region.Dispose();
        }

        StopLogging();
    }

    private static void ValidateRange(ulong address, ulong size)
    {
        if (size == 0)
        {
            throw new GuestMemoryException("A memory region cannot be empty.");
        }

        if (address + (size - 1) < address)
        {
            throw new GuestMemoryException($"Region at 0x{address:x} of size 0x{size:x} overflows the address space.");
        }
    }

    private void OnTruncated(GuestMemoryRegion? region)
    {
        if (region is not null)
        {
            Truncated?.Invoke(region);
        }
    }

    private void Insert(GuestMemoryRegion region)
    {
        lock (_writeLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            GuestMemoryRegion[] current = _regions;
            if (current.Length >= MaxRegions)
            {
                throw new GuestMemoryException($"Guest memory already has the maximum of {MaxRegions} regions.");
            }

            foreach (GuestMemoryRegion r in current)
            {
                if (r.OverlapsGpa(region.GuestPhysicalAddress, region.Size))
                {
                    throw new GuestMemoryException($"Region {region} overlaps region {r}.");
                }

                if (region.UserAddress <= r.UserAddress + (r.Size - 1) && r.UserAddress <= region.UserAddress + (region.Size - 1))
                {
                    throw new GuestMemoryException($"Region {region} overlaps region {r} in user address space.");
                }
            }

            var next = new GuestMemoryRegion[current.Length + 1];
            int at = 0;
            while (at < current.Length && current[at].GuestPhysicalAddress < region.GuestPhysicalAddress)
            {
                at++;
            }

            Array.Copy(current, 0, next, 0, at);
            next[at] = region;
            Array.Copy(current, at, next, at + 1, current.Length - at);
            _regions = next;
        }

        Changed?.Invoke(new GuestMemoryChange(GuestMemoryChangeKind.Added, region));
    }

    private byte* Translate(ulong address, ulong length)
    {
        GuestMemoryRegion? region = FindRegion(address, length) ?? throw new GuestMemoryException(address, length);
        return region.HostAddress + (address - region.GuestPhysicalAddress);
    }

    /// <summary>After a store: its pages count as written while writes are tracked (one field read otherwise).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Written(ulong address, ulong length)
    {
        if (_written is not null)
        {
            MarkWritten(address, length);
        }
    }

    /// <summary>The largest piece of [address, address + wanted) inside the region holding address.</summary>
    private int ChunkAt(ulong address, int wanted, out byte* host)
    {
        GuestMemoryRegion? region = FindRegion(address, 1);
        if (region is null)
        {
            throw new GuestMemoryException(address, (ulong)wanted);
        }

        ulong available = region.LastAddress - address + 1;
        host = region.HostAddress + (address - region.GuestPhysicalAddress);
        return available == 0 || available >= (ulong)wanted ? wanted : (int)available;
    }
}

public enum GuestMemoryChangeKind
{
    Added,
    Removed,
}

public sealed record GuestMemoryChange(GuestMemoryChangeKind Kind, GuestMemoryRegion Region);
