using Vmm.Core.Memory;
using Vmm.Host.Cli;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Driver.Blk;
using Vmm.Virtio.Metrics;
using Vmm.Virtio.Spec;

namespace Vmm.Host.Run;

/// <summary>The guest's virtio-blk driver on top of the generic one: configuration and one <see cref="BlkQueue"/> per queue.</summary>
public sealed class BlkGuest
{
    /// <summary>The blk features the guest accepts when offered (as Linux's virtio_blk does, less the ones it does not use here).</summary>
    public const ulong WantedFeatures =
        VirtioBlkFeatures.SEG_MAX | VirtioBlkFeatures.BLK_SIZE | VirtioBlkFeatures.FLUSH | VirtioBlkFeatures.RO |
        VirtioBlkFeatures.MQ | VirtioBlkFeatures.DISCARD | VirtioBlkFeatures.WRITE_ZEROES | VirtioBlkFeatures.CONFIG_WCE |
        VirtioBlkFeatures.SIZE_MAX | VirtioBlkFeatures.TOPOLOGY;

    public BlkGuest(GuestDevice device, GuestMemory memory, GuestMemoryAllocator allocator)
    {
        ArgumentNullException.ThrowIfNull(device);
        Device = device;
        Span<byte> config = stackalloc byte[VirtioBlkConfig.Size];
        device.Driver.ReadConfig(0, config);
        Config = VirtioBlkConfig.Read(config);
        Queues = [.. device.Driver.Queues.Select(q => new BlkQueue(q, memory, allocator, (device.Driver.NegotiatedFeatures & VirtioFeatures.RING_INDIRECT_DESC) != 0, device.Health, VmmMeters.FrontendQueues.Get(device.Name, q.Index)))];
    }

    public GuestDevice Device { get; }

    public VirtioBlkConfig Config { get; }

    public ulong CapacityBytes => Config.Capacity * VirtioBlk.SectorSize;

    public bool ReadOnly => (Device.Driver.NegotiatedFeatures & VirtioBlkFeatures.RO) != 0;

    public IReadOnlyList<BlkQueue> Queues { get; }
}

/// <summary>
/// One virtio-blk request queue driven from a single guest thread: submit, kick, and wait for
/// completions with "enable interrupts, re-check, sleep" (virtio 1.2, 2.7.14). Headers and status
/// bytes come from a fixed slab, so a steady stream of requests allocates only the request records.
/// A wait ends early with <see cref="DeviceNeedsResetException"/> when the device asks for a reset:
/// what was in flight will not complete then.
/// </summary>
public sealed class BlkQueue
{
    private readonly VirtioDriverQueue _queue;
    private readonly VirtioBlkRequests _requests;
    private readonly DeviceHealth? _health;
    private readonly QueueMetrics? _metrics;

    /// <param name="queue">The driver's queue.</param>
    /// <param name="memory">Guest memory.</param>
    /// <param name="allocator">Where the header and status slab comes from.</param>
    /// <param name="indirect">Whether requests go in indirect tables (VIRTIO_F_INDIRECT_DESC negotiated).</param>
    /// <param name="health">Tells a wait that the device asked for a reset; null: never.</param>
    /// <param name="metrics">Where the guest's requests and kicks on this queue are counted; null: not counted.</param>
    public BlkQueue(VirtioDriverQueue queue, GuestMemory memory, GuestMemoryAllocator allocator, bool indirect, DeviceHealth? health = null, QueueMetrics? metrics = null)
    {
        _metrics = metrics;
        _health = health;
        MaxRequests = indirect ? queue.Queue.Size : Math.Max(1, queue.Queue.Size / 3);
        ArgumentNullException.ThrowIfNull(queue);
        _queue = queue;
        _requests = new VirtioBlkRequests(queue.Queue, memory, new SlabBufferPool(allocator, queue.Queue.Size * 2)) { Metrics = metrics };
    }

    public int Index => _queue.Index;

    public ushort Size => _queue.Queue.Size;

    public int InFlight => _requests.InFlight;

    /// <summary>Requests of one data buffer that fit in the ring at once (3 descriptors each without indirect tables).</summary>
    public int MaxRequests { get; }

    public VirtioBlkRequest? TrySubmitRead(ulong sector, ulong buffer, uint length, object? state = null)
    {
        lock (_queue.SyncRoot)
        {
            return _requests.TrySubmitRead(sector, [new DriverBuffer(buffer, length, true)], state);
        }
    }

    public VirtioBlkRequest? TrySubmitWrite(ulong sector, ulong buffer, uint length, object? state = null)
    {
        lock (_queue.SyncRoot)
        {
            return _requests.TrySubmitWrite(sector, [new DriverBuffer(buffer, length, false)], state);
        }
    }

    public VirtioBlkRequest? TrySubmitFlush(object? state = null)
    {
        lock (_queue.SyncRoot)
        {
            return _requests.TrySubmitFlush(state);
        }
    }

    public VirtioBlkRequest? TrySubmitGetId(ulong buffer, object? state = null)
    {
        lock (_queue.SyncRoot)
        {
            return _requests.TrySubmitGetId(buffer, state);
        }
    }

    /// <summary>Notifies the device if it asked to be (event suppression decides).</summary>
    public void Kick()
    {
        if (_queue.Notify())
        {
            _metrics?.Kicked();
        }
    }

    /// <summary>Takes a completion if one is there, without waiting.</summary>
    public VirtioBlkRequest? TryComplete()
    {
        lock (_queue.SyncRoot)
        {
            return _requests.TryComplete(out VirtioBlkRequest? request) ? request : null;
        }
    }

    /// <summary>
    /// The next completion, sleeping on the queue's interrupt meanwhile; null after <paramref name="timeout"/>.
    /// Throws <see cref="DeviceNeedsResetException"/> once the device set DEVICE_NEEDS_RESET (checked
    /// at least every <see cref="DeviceHealth.CheckInterval"/> while asleep).
    /// </summary>
    public VirtioBlkRequest? WaitForCompletion(TimeSpan timeout)
    {
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        while (true)
        {
            lock (_queue.SyncRoot)
            {
                if (_requests.TryComplete(out VirtioBlkRequest? request))
                {
                    return request;
                }

                if (_queue.Queue.EnableInterrupts())
                {
                    continue;
                }
            }

            // Asleep until the interrupt: the ring is looked at again only when one came (or at
            // the deadline), so a lost interrupt shows as a timeout rather than being polled over.
            bool woke = DeviceHealth.SleepUntilInterrupt(_queue, _health, deadline);

            lock (_queue.SyncRoot)
            {
                // Awake and about to reap: no interrupts until the next sleep (Linux's virtblk_done).
                _queue.Queue.DisableInterrupts();
                if (_requests.TryComplete(out VirtioBlkRequest? request))
                {
                    return request;
                }
            }

            if (!woke)
            {
                return null;
            }
        }
    }

    /// <summary><see cref="WaitForCompletion"/> that turns a silent device into a workload failure.</summary>
    public VirtioBlkRequest Complete(TimeSpan timeout) =>
        WaitForCompletion(timeout) ?? throw new WorkloadFailedException(
            $"The device did not complete a request on queue {Index} within {timeout.TotalSeconds:0} s.");
}

/// <summary>
/// Fixed 16-byte slots of guest memory for request headers and status bytes: O(1) rent and
/// return, no allocation after construction. Enough for <c>count</c> headers plus as many status bytes.
/// </summary>
internal sealed class SlabBufferPool : IGuestBufferPool
{
    private const int SlotSize = 16;
    private readonly ulong[] _free;
    private int _top;

    public SlabBufferPool(GuestMemoryAllocator allocator, int count)
    {
        ArgumentNullException.ThrowIfNull(allocator);
        _free = new ulong[count];
        ulong start = allocator.Allocate((ulong)(count * SlotSize), 64);
        for (int i = 0; i < count; i++)
        {
            _free[i] = start + (ulong)(i * SlotSize);
        }

        _top = count;
    }

    public ulong Rent(int size)
    {
        if (size > SlotSize)
        {
            throw new ArgumentOutOfRangeException(nameof(size), size, $"Slots are {SlotSize} bytes.");
        }

        if (_top == 0)
        {
            throw new InvalidOperationException("Every header slot is in use.");
        }

        return _free[--_top];
    }

    public void Return(ulong address, int size) => _free[_top++] = address;
}
