using NUnit.Framework;
using System.Buffers.Binary;
using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Tests.Queues;

/// <summary>One guest memory with a driver queue and a device queue over the same rings.</summary>
internal sealed class QueueHarness : IDisposable
{
    public const ulong MemorySize = 4 << 20;

    private int _interrupts;

    private QueueHarness(GuestMemory memory, GuestMemoryAllocator allocator, ulong features)
    {
        Memory = memory;
        Allocator = allocator;
        Features = features;
        Kick = new EventFd();
        Interrupt = new FunctionBackedInterruptLine(0, _ =>
        {
            Interlocked.Increment(ref _interrupts);
            InterruptSignal.Release();
        });
    }

    public GuestMemory Memory { get; }

    public GuestMemoryAllocator Allocator { get; }

    public ulong Features { get; }

    public EventFd Kick { get; }

    public InterruptLine Interrupt { get; }

    public SemaphoreSlim InterruptSignal { get; } = new(0);

    public int Interrupts => Volatile.Read(ref _interrupts);

    public IDriverQueue Driver { get; private set; } = null!;

    public IDeviceQueue Device { get; private set; } = null!;

    public VirtqueueResources Resources => new(Driver.Params, Memory, Kick, Interrupt);

    /// <summary>Split and packed rings, each bare and with indirect tables and EVENT_IDX: (packed, features).</summary>
    public static IEnumerable<TestCaseData> RingKinds()
    {
        yield return new TestCaseData(false, 0UL).SetArgDisplayNames("split");
        yield return new TestCaseData(false, VirtioDeviceBase.SupportedRingFeatures & ~VirtioFeatures.RING_PACKED).SetArgDisplayNames("split+indirect+event_idx");
        yield return new TestCaseData(true, 0UL).SetArgDisplayNames("packed");
        yield return new TestCaseData(true, VirtioDeviceBase.SupportedRingFeatures).SetArgDisplayNames("packed+indirect+event_idx");
    }

    public static QueueHarness Create(bool packed, ushort size = 16, ulong features = 0, GuestMemory? memory = null)
    {
        ulong all = features | (packed ? VirtioFeatures.RING_PACKED : 0);
        memory ??= GuestMemory.Create(MemorySize);
        GuestMemoryRegion first = memory.Regions[0];
        var allocator = new GuestMemoryAllocator(first.GuestPhysicalAddress + 0x1000, first.Size - 0x1000);
        var h = new QueueHarness(memory, allocator, all);
        h.Driver = DriverQueue.Create(memory, allocator, size, all);
        h.Device = DeviceQueue.Create(h.Resources, all, null);
        return h;
    }

    /// <summary>A split pair whose 16-bit indices both start at <paramref name="initialIndex"/>.</summary>
    public static QueueHarness CreateSplitAt(ushort initialIndex, ushort size, ulong features)
    {
        GuestMemory memory = GuestMemory.Create(MemorySize);
        var allocator = new GuestMemoryAllocator(0x1000, MemorySize - 0x1000);
        var h = new QueueHarness(memory, allocator, features);
        var p = new VirtqueueParams(
            size,
            allocator.Allocate(VirtqueueLayout.SplitDescriptorTableSize(size), 16),
            allocator.Allocate(VirtqueueLayout.SplitAvailRingSize(size), 2),
            allocator.Allocate(VirtqueueLayout.SplitUsedRingSize(size), 4));
        h.Driver = new SplitDriverQueue(memory, p, features, allocator, initialIndex);
        h.Device = DeviceQueue.Create(h.Resources, features, new VirtqueueState(initialIndex, initialIndex));
        return h;
    }

    /// <summary>Replaces the device queue (a restart) from <paramref name="state"/>.</summary>
    public void RecreateDevice(VirtqueueState? state) => Device = DeviceQueue.Create(Resources, Features, state);

    /// <summary>A request: a readable buffer holding <paramref name="tag"/> and a writable one of <paramref name="writable"/> bytes.</summary>
    public DriverBuffer[] Request(uint tag, uint writable = 32)
    {
        ulong r = Allocator.Allocate(16, 16);
        Memory.WriteUInt32(r, tag);
        ulong w = Allocator.Allocate(writable, 16);
        Memory.Clear(w, writable);
        return [new DriverBuffer(r, 16, false), new DriverBuffer(w, writable, true)];
    }

    /// <summary>What a device does with <see cref="Request"/>: echo the tag into the writable buffer.</summary>
    public static uint Echo(GuestMemory memory, DescriptorChain chain)
    {
        uint tag = memory.ReadUInt32(chain.Segments[0].Address);
        DescriptorSegment w = chain.Segments[^1];
        memory.WriteUInt32(w.Address, tag);
        return 4;
    }

    public uint ReadTag(DriverBuffer[] request) => Memory.ReadUInt32(request[^1].Address);

    public void Dispose()
    {
        Kick.Dispose();
        InterruptSignal.Dispose();
        Memory.Dispose();
    }
}

/// <summary>Writes split ring contents by hand, to build malformed rings.</summary>
internal sealed class RawSplitRing
{
    public const ulong DescArea = 0x1000;
    public const ulong AvailArea = 0x2000;
    public const ulong UsedArea = 0x3000;

    private readonly GuestMemory _memory;
    private ushort _availIdx;

    public RawSplitRing(GuestMemory memory, ushort size)
    {
        _memory = memory;
        Size = size;
        memory.Clear(0, 0x4000);
    }

    public ushort Size { get; }

    public VirtqueueParams Params => new(Size, DescArea, AvailArea, UsedArea);

    public void Desc(ushort index, ulong address, uint length, ushort flags, ushort next = 0) =>
        WriteDesc(DescArea + (index * 16UL), address, length, flags, next);

    public void WriteDesc(ulong at, ulong address, uint length, ushort flags, ushort next)
    {
        Span<byte> d = _memory.GetSpan(at, 16);
        BinaryPrimitives.WriteUInt64LittleEndian(d, address);
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], length);
        BinaryPrimitives.WriteUInt16LittleEndian(d[12..], flags);
        BinaryPrimitives.WriteUInt16LittleEndian(d[14..], next);
    }

    public void Offer(ushort head)
    {
        _memory.WriteUInt16(AvailArea + 4 + ((ulong)(_availIdx % Size) * 2), head);
        _availIdx++;
        _memory.WriteUInt16(AvailArea + 2, _availIdx);
    }

    public void SetAvailIdx(ushort idx) => _memory.WriteUInt16(AvailArea + 2, idx);
}

/// <summary>Writes packed ring descriptors by hand (first lap: wrap counter 1).</summary>
internal sealed class RawPackedRing
{
    public const ulong DescArea = 0x1000;
    public const ulong DriverEventArea = 0x2000;
    public const ulong DeviceEventArea = 0x3000;

    private readonly GuestMemory _memory;

    public RawPackedRing(GuestMemory memory, ushort size)
    {
        _memory = memory;
        Size = size;
        memory.Clear(0, 0x4000);
    }

    public ushort Size { get; }

    public VirtqueueParams Params => new(Size, DescArea, DriverEventArea, DeviceEventArea);

    /// <summary>Writes descriptor <paramref name="position"/> as available in the first lap.</summary>
    public void Desc(ushort position, ulong address, uint length, ushort id, ushort flags) =>
        WriteDesc(DescArea + (position * 16UL), address, length, id, (ushort)(flags | VirtqueueLayout.VIRTQ_DESC_F_AVAIL));

    public void WriteDesc(ulong at, ulong address, uint length, ushort id, ushort flags)
    {
        Span<byte> d = _memory.GetSpan(at, 16);
        BinaryPrimitives.WriteUInt64LittleEndian(d, address);
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], length);
        BinaryPrimitives.WriteUInt16LittleEndian(d[12..], id);
        BinaryPrimitives.WriteUInt16LittleEndian(d[14..], flags);
    }
}
