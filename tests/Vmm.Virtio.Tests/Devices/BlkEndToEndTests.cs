using NUnit.Framework;
using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;
using Vmm.Virtio.Devices.Blk;
using Vmm.Virtio.Devices.Rng;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Driver.Blk;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Tests.Devices;

/// <summary>
/// Guest driver queue, device queue and worker thread together: requests built by
/// <see cref="VirtioBlkRequests"/>, kicked through an eventfd, completed by interrupt.
/// </summary>
[TestFixture]
public sealed class BlkEndToEndTests
{
    private const int Sector = VirtioBlk.SectorSize;
    private const int WaitMilliseconds = 10_000;

    private static readonly ulong[] RingFeatureSets =
    [
        0,
        VirtioFeatures.RING_INDIRECT_DESC | VirtioFeatures.RING_EVENT_IDX,
        VirtioFeatures.RING_PACKED,
        VirtioFeatures.RING_PACKED | VirtioFeatures.RING_INDIRECT_DESC | VirtioFeatures.RING_EVENT_IDX,
    ];

    [TestCaseSource(nameof(RingFeatureSets))]
    public void Write_flush_read_back_and_get_id(ulong ringFeatures)
    {
        using var bed = new BlkTestBed(256 * Sector);
        using var memory = GuestMemory.Create(Guest.MemorySize);
        using VirtioBlkDevice device = bed.CreateDevice(serial: "e2e");
        using var guest = new Guest(device, memory, ringFeatures, queueIndex: 0);

        const int count = 32;
        var written = new byte[count][];
        var targets = new ulong[count];
        for (int i = 0; i < count; i++)
        {
            written[i] = BlkTestBed.Pattern(4 * Sector, 100 + i);
            ulong source = guest.Allocator.Allocate(4 * Sector);
            memory.Write(source, written[i]);
            guest.Submit(r => r.TrySubmitWrite(
                (ulong)i * 4,
                [new DriverBuffer(source, Sector, false), new DriverBuffer(source + Sector, 3 * Sector, false)]));
        }

        guest.Submit(r => r.TrySubmitFlush());
        Assert.That(guest.WaitAll(), Has.All.Property(nameof(VirtioBlkRequest.Succeeded)).True);

        for (int i = 0; i < count; i++)
        {
            targets[i] = guest.Allocator.Allocate(4 * Sector);
            int index = i;
            guest.Submit(r => r.TrySubmitRead((ulong)index * 4, [new DriverBuffer(targets[index], 4 * Sector, true)]));
        }

        ulong id = guest.Allocator.Allocate(VirtioBlk.VIRTIO_BLK_ID_BYTES);
        guest.Submit(r => r.TrySubmitGetId(id));
        List<VirtioBlkRequest> done = guest.WaitAll();

        byte[] idBytes = new byte[VirtioBlk.VIRTIO_BLK_ID_BYTES];
        memory.Read(id, idBytes);
        Assert.Multiple(() =>
        {
            Assert.That(done, Has.All.Property(nameof(VirtioBlkRequest.Succeeded)).True);
            Assert.That(done.Where(r => r.Type == VirtioBlkRequestType.VIRTIO_BLK_T_IN).Select(r => r.BytesWritten), Is.All.EqualTo(4u * Sector + 1));
            for (int i = 0; i < count; i++)
            {
                byte[] back = new byte[4 * Sector];
                memory.Read(targets[i], back);
                Assert.That(back, Is.EqualTo(written[i]), $"request {i}");
            }

            Assert.That(bed.ReadFile(0, 4 * Sector), Is.EqualTo(written[0]));
            Assert.That(idBytes[..3], Is.EqualTo("e2e"u8.ToArray()));
            Assert.That(guest.Requests.InFlight, Is.Zero);
        });
    }

    [Test]
    public void Errors_come_back_as_status_and_the_queue_keeps_running()
    {
        using var bed = new BlkTestBed(16 * Sector);
        using var memory = GuestMemory.Create(Guest.MemorySize);
        using VirtioBlkDevice device = bed.CreateDevice(readOnly: true);
        using var guest = new Guest(device, memory, VirtioFeatures.RING_EVENT_IDX, queueIndex: 0);
        ulong buffer = guest.Allocator.Allocate(Sector);
        guest.Submit(r => r.TrySubmitWrite(0, [new DriverBuffer(buffer, Sector, false)]));
        guest.Submit(r => r.TrySubmitRead(16, [new DriverBuffer(buffer, Sector, true)]));
        guest.Submit(r => r.TrySubmit(77, 0, []));
        guest.Submit(r => r.TrySubmitRead(15, [new DriverBuffer(buffer, Sector, true)]));
        List<VirtioBlkRequest> done = guest.WaitAll();
        Assert.That(done.Select(r => r.Status), Is.EqualTo(new[]
        {
            VirtioBlkStatus.VIRTIO_BLK_S_IOERR, VirtioBlkStatus.VIRTIO_BLK_S_IOERR, VirtioBlkStatus.VIRTIO_BLK_S_UNSUPP, VirtioBlkStatus.VIRTIO_BLK_S_OK,
        }));
    }

    [Test]
    public void A_chain_without_a_status_byte_faults_the_device()
    {
        using var bed = new BlkTestBed(16 * Sector);
        using var memory = GuestMemory.Create(Guest.MemorySize);
        using VirtioBlkDevice device = bed.CreateDevice();
        using var faulted = new ManualResetEventSlim();
        DeviceFault? fault = null;
        device.Faulted += f =>
        {
            fault = f;
            faulted.Set();
        };
        using var guest = new Guest(device, memory, 0, queueIndex: 0);
        ulong header = guest.Allocator.Allocate(VirtioBlkRequestHeader.Size);
        new VirtioBlkRequestHeader(VirtioBlkRequestType.VIRTIO_BLK_T_FLUSH, 0, 0).Write(memory.GetSpan(header, VirtioBlkRequestHeader.Size));
        Assert.That(guest.Queue.TrySubmit([new DriverBuffer(header, VirtioBlkRequestHeader.Size, false)], "broken"), Is.True);
        guest.Kick.Signal();
        Assert.That(faulted.Wait(WaitMilliseconds), Is.True);
        Assert.That(fault!.Cause, Is.InstanceOf<VirtqueueException>());
    }

    [Test]
    public void Queues_run_concurrently_on_their_own_workers()
    {
        const int queues = 3;
        const int perQueue = 48;
        using var bed = new BlkTestBed(queues * perQueue * 2L * Sector);
        using var memory = GuestMemory.Create(Guest.MemorySize);
        using VirtioBlkDevice device = bed.CreateDevice(queues: queues);
        var guests = Enumerable.Range(0, queues).Select(q => new Guest(device, memory, VirtioFeatures.RING_EVENT_IDX, q)).ToArray();
        try
        {
            Parallel.For(0, queues, new ParallelOptions { MaxDegreeOfParallelism = queues }, q =>
            {
                Guest guest = guests[q];
                var sources = new List<(ulong Address, byte[] Data, ulong Sector)>();
                for (int i = 0; i < perQueue; i++)
                {
                    ulong sector = (ulong)((q * perQueue) + i) * 2;
                    byte[] data = BlkTestBed.Pattern(2 * Sector, (q * 1000) + i);
                    ulong address = guest.Allocator.Allocate(2 * Sector);
                    memory.Write(address, data);
                    sources.Add((address, data, sector));
                    guest.Submit(r => r.TrySubmitWrite(sector, [new DriverBuffer(address, 2 * Sector, false)]));
                }

                Assert.That(guest.WaitAll(), Has.All.Property(nameof(VirtioBlkRequest.Succeeded)).True);
                foreach ((ulong address, _, ulong sector) in sources)
                {
                    memory.Clear(address, 2 * Sector);
                    guest.Submit(r => r.TrySubmitRead(sector, [new DriverBuffer(address, 2 * Sector, true)]));
                }

                Assert.That(guest.WaitAll(), Has.All.Property(nameof(VirtioBlkRequest.Succeeded)).True);
                foreach ((ulong address, byte[] data, _) in sources)
                {
                    byte[] back = new byte[data.Length];
                    memory.Read(address, back);
                    Assert.That(back, Is.EqualTo(data));
                }
            });
        }
        finally
        {
            foreach (Guest guest in guests)
            {
                guest.Dispose();
            }
        }
    }

    [Test]
    public void Stop_and_restart_resumes_where_the_queue_stopped()
    {
        using var bed = new BlkTestBed(16 * Sector);
        using var memory = GuestMemory.Create(Guest.MemorySize);
        using VirtioBlkDevice device = bed.CreateDevice();
        using var guest = new Guest(device, memory, VirtioFeatures.RING_EVENT_IDX, queueIndex: 0);
        ulong buffer = guest.Allocator.Allocate(Sector);
        guest.Submit(r => r.TrySubmitRead(1, [new DriverBuffer(buffer, Sector, true)]));
        guest.WaitAll();

        VirtqueueState? state = device.StopQueue(0);
        Assert.That(state, Is.Not.Null);
        guest.Start(state);
        guest.Submit(r => r.TrySubmitRead(2, [new DriverBuffer(buffer, Sector, true)]));
        Assert.That(guest.WaitAll(), Has.All.Property(nameof(VirtioBlkRequest.Succeeded)).True);
    }

    [Test]
    public void A_driver_without_flush_gets_writethrough()
    {
        using var bed = new BlkTestBed(16 * Sector);
        using var memory = GuestMemory.Create(Guest.MemorySize);
        using VirtioBlkDevice device = bed.CreateDevice();
        Assert.That(device.Config.Writeback, Is.EqualTo(1));
        using var guest = new Guest(device, memory, 0, queueIndex: 0, flush: false);
        Assert.That(device.Config.Writeback, Is.Zero);

        ulong buffer = guest.Allocator.Allocate(Sector);
        memory.Write(buffer, BlkTestBed.Pattern(Sector, 5));
        guest.Submit(r => r.TrySubmitWrite(3, [new DriverBuffer(buffer, Sector, false)]));
        Assert.That(guest.WaitAll(), Has.All.Property(nameof(VirtioBlkRequest.Succeeded)).True);
        Assert.That(bed.ReadFile(3 * Sector, Sector), Is.EqualTo(BlkTestBed.Pattern(Sector, 5)));
    }

    [Test]
    public void Rng_fills_a_buffer_through_the_queue()
    {
        using var memory = GuestMemory.Create(4 << 20);
        using var device = new VirtioRngDevice();
        var allocator = new GuestMemoryAllocator(0x1000, (4 << 20) - 0x1000);
        IDriverQueue queue = DriverQueue.Create(memory, allocator, 64, VirtioFeatures.VERSION_1);
        using var kick = new EventFd();
        using var irq = new EventFd();
        device.StartQueue(0, new VirtqueueResources(queue.Params, memory, kick, new EventBackedInterruptLine(0, irq)), VirtioFeatures.VERSION_1);
        ulong buffer = allocator.Allocate(256);
        memory.Clear(buffer, 256);
        Assert.That(queue.TrySubmit([new DriverBuffer(buffer, 256, true)], "rng"), Is.True);
        kick.Signal();

        object? token = null;
        uint written = 0;
        var deadline = DateTime.UtcNow.AddMilliseconds(WaitMilliseconds);
        while (!queue.TryTakeUsed(out token, out written) && DateTime.UtcNow < deadline)
        {
            irq.Wait(100);
        }

        byte[] bytes = new byte[256];
        memory.Read(buffer, bytes);
        device.StopQueue(0);
        Assert.Multiple(() =>
        {
            Assert.That(token, Is.EqualTo("rng"));
            Assert.That(written, Is.EqualTo(256u));
            Assert.That(bytes.Distinct().Count(), Is.GreaterThan(16));
        });
    }

    /// <summary>The guest side of one queue: its driver queue, kick and interrupt eventfds, and request builder.</summary>
    private sealed class Guest : IDisposable
    {
        /// <summary>Guest RAM for up to four queues, a quarter each.</summary>
        public const ulong MemorySize = 8 << 20;

        private readonly VirtioBlkDevice _device;
        private readonly int _queueIndex;
        private readonly ulong _features;
        private readonly GuestMemory _memory;
        private readonly List<VirtioBlkRequest> _pending = [];

        public Guest(VirtioBlkDevice device, GuestMemory memory, ulong ringFeatures, int queueIndex, bool flush = true)
        {
            _device = device;
            _queueIndex = queueIndex;
            _features = VirtioFeatures.VERSION_1 | (flush ? VirtioBlkFeatures.FLUSH : 0) | ringFeatures;
            _memory = memory;
            ulong window = MemorySize / 4;
            Allocator = new GuestMemoryAllocator(((ulong)queueIndex * window) + 0x1000, window - 0x1000);
            Queue = DriverQueue.Create(_memory, Allocator, 128, _features);
            Requests = new VirtioBlkRequests(Queue, _memory, new GuestBufferPool(Allocator));
            Start(null);
        }

        public GuestMemoryAllocator Allocator { get; }

        public IDriverQueue Queue { get; }

        public VirtioBlkRequests Requests { get; }

        public EventFd Kick { get; } = new();

        public EventFd Interrupt { get; } = new();

        public void Start(VirtqueueState? state) =>
            _device.StartQueue(_queueIndex, new VirtqueueResources(Queue.Params, _memory, Kick, new EventBackedInterruptLine(_queueIndex, Interrupt)), _features, state);

        public void Submit(Func<VirtioBlkRequests, VirtioBlkRequest?> submit)
        {
            // A full ring waits for completions, as a driver would.
            var deadline = DateTime.UtcNow.AddMilliseconds(WaitMilliseconds);
            VirtioBlkRequest? request;
            while ((request = submit(Requests)) is null)
            {
                if (Queue.NeedsKick())
                {
                    Kick.Signal();
                }

                if (!Requests.TryComplete(out _))
                {
                    Assert.That(DateTime.UtcNow, Is.LessThan(deadline), "the ring made room in time");
                    Interrupt.Wait(100);
                }
            }

            _pending.Add(request);
            if (Queue.NeedsKick())
            {
                Kick.Signal();
            }
        }

        /// <summary>Waits for every submitted request, by interrupt, and returns them in submission order.</summary>
        public List<VirtioBlkRequest> WaitAll()
        {
            var deadline = DateTime.UtcNow.AddMilliseconds(WaitMilliseconds);
            while (_pending.Any(r => !r.IsCompleted))
            {
                while (Requests.TryComplete(out _))
                {
                }

                if (_pending.All(r => r.IsCompleted))
                {
                    break;
                }

                Assert.That(DateTime.UtcNow, Is.LessThan(deadline), "requests completed in time");
                Interrupt.Wait(100);
            }

            List<VirtioBlkRequest> done = [.. _pending];
            _pending.Clear();
            return done;
        }

        public void Dispose()
        {
            _device.StopQueue(_queueIndex);
            Kick.Dispose();
            Interrupt.Dispose();
        }
    }
}
