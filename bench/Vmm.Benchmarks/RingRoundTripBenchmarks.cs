using BenchmarkDotNet.Attributes;
using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Benchmarks;

/// <summary>
/// One request's trip through a ring, both sides in one thread: the driver makes a 3-buffer
/// chain available (header, data, status: a virtio-blk request's shape), the device pops it,
/// writes the used entry, the driver reaps it. Measures ring bookkeeping alone (no threads, no eventfds).
/// </summary>
[MemoryDiagnoser]
public class RingRoundTripBenchmarks
{
    private GuestMemory _memory = null!;
    private IDriverQueue _driver = null!;
    private IDeviceQueue _device = null!;
    private EventFd _kick = null!;
    private DriverBuffer[] _chain = null!;
    private readonly object _token = new();

    [Params(false, true)]
    public bool Packed { get; set; }

    [Params(false, true)]
    public bool Indirect { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _memory = GuestMemory.Create(4 << 20);
        var allocator = new GuestMemoryAllocator(0x1000, (4 << 20) - 0x1000);
        ulong features = VirtioFeatures.VERSION_1 | VirtioFeatures.RING_EVENT_IDX
            | (Packed ? VirtioFeatures.RING_PACKED : 0) | (Indirect ? VirtioFeatures.RING_INDIRECT_DESC : 0);
        _driver = DriverQueue.Create(_memory, allocator, 256, features);
        _kick = new EventFd();
        var line = new FunctionBackedInterruptLine(0, _ => { });
        _device = DeviceQueue.Create(new VirtqueueResources(_driver.Params, _memory, _kick, line), features, null);
        ulong header = allocator.Allocate(16);
        ulong data = allocator.Allocate(4096, 4096);
        ulong status = allocator.Allocate(1);
        _chain = [new DriverBuffer(header, 16, false), new DriverBuffer(data, 4096, true), new DriverBuffer(status, 1, true)];
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _kick.Dispose();
        _memory.Dispose();
    }

    [Benchmark]
    public bool RoundTrip()
    {
        _driver.TrySubmit(_chain, _token);
        _driver.NeedsKick();
        _device.TryPop(out DescriptorChain chain);
        _device.Complete(chain, 4097);
        _device.NotifyIfNeeded();
        return _driver.TryTakeUsed(out _, out _);
    }
}
