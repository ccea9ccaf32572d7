using Vmm.Core.Memory;
using Vmm.Core.Posix.IoUring;
using Vmm.Core.Posix.Storage;
using Vmm.Virtio.Devices.Blk;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Tests.Devices;

/// <summary>
/// A disk image in a temporary file plus guest memory of two regions: low RAM [0, 2 MiB) made of
/// two adjacent 1 MiB regions, and high RAM [4 GiB, 4 GiB + 1 MiB).
/// </summary>
internal sealed class BlkTestBed : IDisposable
{
    public const ulong LowRam = 0;
    public const ulong RegionBoundary = 1 << 20;
    public const ulong HighRam = 1UL << 32;

    private ulong _nextLow = 0x1000;
    private ulong _nextHigh = HighRam;

    public BlkTestBed(long fileLength, byte fill = 0xAB)
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"vmm-blk-{Guid.NewGuid():N}.img");
        using (FileStream stream = File.Create(Path))
        {
            byte[] block = new byte[64 * 1024];
            Array.Fill(block, fill);
            long left = fileLength;
            while (left > 0)
            {
                int take = (int)Math.Min(left, block.Length);
                stream.Write(block, 0, take);
                left -= take;
            }
        }

        Memory = GuestMemory.Create([
            new GuestMemoryRange(LowRam, RegionBoundary),
            new GuestMemoryRange(RegionBoundary, RegionBoundary),
            new GuestMemoryRange(HighRam, 1 << 20),
        ]);
    }

    public string Path { get; }

    public GuestMemory Memory { get; }

    public ulong AllocLow(uint size, uint align = 16)
    {
        _nextLow = (_nextLow + align - 1) & ~(ulong)(align - 1);
        ulong address = _nextLow;
        _nextLow += size;
        return address;
    }

    public ulong AllocHigh(uint size, uint align = 16)
    {
        _nextHigh = (_nextHigh + align - 1) & ~(ulong)(align - 1);
        ulong address = _nextHigh;
        _nextHigh += size;
        return address;
    }

    public VirtioBlkDevice CreateDevice(
        bool readOnly = false,
        int queues = 1,
        string? serial = null,
        BlkCacheMode cache = BlkCacheMode.Writeback,
        AioMode aio = AioMode.Auto,
        IoUringAvailability? ioUring = null) =>
        new(new VirtioBlkOptions(Path, readOnly, queues, 256, serial) { Cache = cache, Aio = aio }, ioUring);

    /// <summary>Writes a request header into fresh guest memory and returns its (readable) segment.</summary>
    public DescriptorSegment Header(uint type, ulong sector)
    {
        ulong address = AllocLow(VirtioBlkRequestHeader.Size);
        Span<byte> bytes = stackalloc byte[VirtioBlkRequestHeader.Size];
        new VirtioBlkRequestHeader(type, 0, sector).Write(bytes);
        Memory.Write(address, bytes);
        return new DescriptorSegment(address, VirtioBlkRequestHeader.Size, false);
    }

    public DescriptorSegment Status()
    {
        ulong address = AllocLow(1, 1);
        Memory.WriteByte(address, 0xEE);
        return new DescriptorSegment(address, 1, true);
    }

    public DescriptorSegment Readable(byte[] data, bool high = false)
    {
        ulong address = high ? AllocHigh((uint)data.Length) : AllocLow((uint)data.Length);
        Memory.Write(address, data);
        return new DescriptorSegment(address, (uint)data.Length, false);
    }

    public DescriptorSegment Writable(uint length, bool high = false)
    {
        ulong address = high ? AllocHigh(length) : AllocLow(length);
        Memory.Clear(address, length);
        return new DescriptorSegment(address, length, true);
    }

    public DescriptorSegment Ranges(params VirtioBlkDiscardWriteZeroes[] ranges)
    {
        byte[] table = new byte[ranges.Length * VirtioBlkDiscardWriteZeroes.Size];
        for (int i = 0; i < ranges.Length; i++)
        {
            ranges[i].Write(table.AsSpan(i * VirtioBlkDiscardWriteZeroes.Size));
        }

        return Readable(table);
    }

    public static DescriptorChain Chain(params DescriptorSegment[] segments) => new(0, segments, (ushort)segments.Length);

    public byte[] ReadGuest(DescriptorSegment segment)
    {
        byte[] bytes = new byte[segment.Length];
        Memory.Read(segment.Address, bytes);
        return bytes;
    }

    public byte StatusOf(DescriptorSegment status) => Memory.ReadByte(status.Address);

    public byte[] ReadFile(long offset, int length)
    {
        using var stream = new FileStream(Path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        byte[] bytes = new byte[length];
        stream.Position = offset;
        stream.ReadExactly(bytes);
        return bytes;
    }

    public byte[] ReadWholeFile()
    {
        using var stream = new FileStream(Path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        byte[] bytes = new byte[stream.Length];
        stream.ReadExactly(bytes);
        return bytes;
    }

    public static byte[] Pattern(int length, int seed)
    {
        byte[] bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    public void Dispose()
    {
        Memory.Dispose();
        File.Delete(Path);
    }
}
