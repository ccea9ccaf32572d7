using NUnit.Framework;
using Vmm.Core.Posix;
using Vmm.Core.Posix.IoUring;
using Vmm.Core.Posix.Storage;
using Vmm.TestKit;
using Vmm.Virtio.Devices.Blk;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using static Vmm.Virtio.Spec.VirtioBlkRequestType;
using static Vmm.Virtio.Spec.VirtioBlkStatus;

namespace Vmm.Virtio.Tests.Devices;

/// <summary>
/// One queue's requests with an engine the test drives by hand: which operations were started,
/// and in what order they finish. Covers out-of-order completion, FLUSH ordering against writes in
/// flight, writethrough and the cache modes, and a driver that reuses a head still in flight.
/// </summary>
[TestFixture]
public sealed class BlkQueueTests
{
    private const int Sector = VirtioBlk.SectorSize;

    [Test]
    public void Requests_complete_as_their_operations_finish_not_as_they_arrived()
    {
        using var bed = new BlkTestBed(64 * Sector, fill: 0);
        using VirtioBlkDevice device = bed.CreateDevice();
        using var engine = new ManualEngine(device.Disk);
        using var queue = new BlkQueue(device, bed.Memory, engine, 256);
        var sink = new Sink();
        byte[][] data = [.. Enumerable.Range(0, 4).Select(i => BlkTestBed.Pattern(2 * Sector, i))];
        var statuses = new DescriptorSegment[4];
        for (ushort i = 0; i < 4; i++)
        {
            statuses[i] = bed.Status();
            Assert.That(queue.Start(Chain(i, bed.Header(VIRTIO_BLK_T_OUT, (ulong)i * 2), bed.Readable(data[i]), statuses[i]), out _), Is.False);
        }

        Assert.That(engine.Started.Select(r => r.Operation), Is.All.EqualTo(IoOperation.Write));
        Assert.That(queue.InFlight, Is.EqualTo(4));

        foreach (ushort head in new ushort[] { 2, 0, 3, 1 })
        {
            engine.Finish(head);
            Assert.That(queue.Reap(sink), Is.EqualTo(1));
        }

        Assert.That(sink.Heads, Is.EqualTo(new ushort[] { 2, 0, 3, 1 }), "each completion names its own request");
        Assert.That(sink.Lengths, Is.All.EqualTo(1u));
        Assert.That(statuses.Select(bed.StatusOf), Is.All.EqualTo(VIRTIO_BLK_S_OK));
        Assert.That(queue.InFlight, Is.Zero);
        for (int i = 0; i < 4; i++)
        {
            Assert.That(bed.ReadFile(i * 2 * Sector, 2 * Sector), Is.EqualTo(data[i]));
        }
    }

    [Test]
    public void A_flush_waits_for_the_writes_in_flight_before_it_and_not_for_later_ones()
    {
        using var bed = new BlkTestBed(64 * Sector, fill: 0);
        using VirtioBlkDevice device = bed.CreateDevice();
        using var engine = new ManualEngine(device.Disk);
        using var queue = new BlkQueue(device, bed.Memory, engine, 256);
        var sink = new Sink();

        queue.Start(Chain(0, bed.Header(VIRTIO_BLK_T_OUT, 0), bed.Readable(new byte[Sector]), bed.Status()), out _);
        queue.Start(Chain(1, bed.Header(VIRTIO_BLK_T_OUT, 1), bed.Readable(new byte[Sector]), bed.Status()), out _);
        DescriptorSegment flushStatus = bed.Status();
        Assert.That(queue.Start(Chain(2, bed.Header(VIRTIO_BLK_T_FLUSH, 0), flushStatus), out _), Is.False);
        queue.Start(Chain(3, bed.Header(VIRTIO_BLK_T_OUT, 2), bed.Readable(new byte[Sector]), bed.Status()), out _);

        Assert.That(engine.StartedOperations(IoOperation.Flush), Is.Zero, "no fdatasync while writes before it are in flight");

        engine.Finish(1);
        queue.Reap(sink);
        Assert.That(engine.StartedOperations(IoOperation.Flush), Is.Zero, "one earlier write is still in flight");

        engine.Finish(0);
        queue.Reap(sink);
        Assert.That(engine.StartedOperations(IoOperation.Flush), Is.EqualTo(1), "the last earlier write done: the flush runs, not waiting for the later write");
        Assert.That(sink.Heads, Is.EqualTo(new ushort[] { 1, 0 }));

        engine.Finish(2);
        queue.Reap(sink);
        Assert.That(sink.Heads, Is.EqualTo(new ushort[] { 1, 0, 2 }), "the flush completes before the later write");
        Assert.That(bed.StatusOf(flushStatus), Is.EqualTo(VIRTIO_BLK_S_OK));

        engine.Finish(3);
        queue.Reap(sink);
        Assert.That(sink.Heads, Is.EqualTo(new ushort[] { 1, 0, 2, 3 }));
    }

    [Test]
    public void A_flush_with_no_write_in_flight_runs_at_once_and_unsafe_mode_skips_it()
    {
        using var bed = new BlkTestBed(64 * Sector, fill: 0);
        using (VirtioBlkDevice device = bed.CreateDevice())
        using (var engine = new ManualEngine(device.Disk))
        using (var queue = new BlkQueue(device, bed.Memory, engine, 256))
        {
            queue.Start(Chain(5, bed.Header(VIRTIO_BLK_T_FLUSH, 0), bed.Status()), out _);
            Assert.That(engine.StartedOperations(IoOperation.Flush), Is.EqualTo(1));
        }

        using (VirtioBlkDevice device = bed.CreateDevice(cache: BlkCacheMode.Unsafe))
        using (var engine = new ManualEngine(device.Disk))
        using (var queue = new BlkQueue(device, bed.Memory, engine, 256))
        {
            queue.Start(Chain(6, bed.Header(VIRTIO_BLK_T_OUT, 0), bed.Readable(new byte[Sector]), bed.Status()), out _);
            DescriptorSegment status = bed.Status();
            Assert.That(queue.Start(Chain(7, bed.Header(VIRTIO_BLK_T_FLUSH, 0), status), out uint written), Is.True, "unsafe: the flush succeeds at once, waiting for nothing");
            Assert.That(written, Is.EqualTo(1u));
            Assert.That(bed.StatusOf(status), Is.EqualTo(VIRTIO_BLK_S_OK));
            Assert.That(engine.StartedOperations(IoOperation.Flush), Is.Zero);
        }
    }

    [TestCase(BlkCacheMode.Writeback, true)]
    [TestCase(BlkCacheMode.None, true)]
    [TestCase(BlkCacheMode.Unsafe, false)]
    public void Writethrough_makes_each_write_durable_before_it_completes_where_the_mode_honours_it(BlkCacheMode cache, bool honoured)
    {
        using var bed = new BlkTestBed(64 * Sector, fill: 0);
        using VirtioBlkDevice device = bed.CreateDevice(cache: cache);
        using var engine = new ManualEngine(device.Disk);
        using var queue = new BlkQueue(device, bed.Memory, engine, 256);
        queue.Start(Chain(0, bed.Header(VIRTIO_BLK_T_OUT, 0), bed.Readable(new byte[Sector]), bed.Status()), out _);

        device.WriteConfig(VirtioBlkConfig.WritebackOffset, [0]);
        queue.Start(Chain(1, bed.Header(VIRTIO_BLK_T_OUT, 1), bed.Readable(new byte[Sector]), bed.Status()), out _);
        queue.Start(Chain(2, bed.Header(VIRTIO_BLK_T_WRITE_ZEROES, 0), bed.Ranges(new VirtioBlkDiscardWriteZeroes(8, 8, 0)), bed.Status()), out _);
        engine.Finish(2);
        queue.Reap(new Sink());

        Assert.That(engine.Started[0].Dsync, Is.False, "writeback: no RWF_DSYNC");
        Assert.That(engine.Started[1].Dsync, Is.EqualTo(honoured), "writethrough: RWF_DSYNC");
        Assert.That(engine.StartedOperations(IoOperation.Flush), Is.EqualTo(honoured ? 1 : 0), "writethrough zeroes end with fdatasync");
    }

    [Test]
    public void A_head_made_available_again_while_in_flight_breaks_the_ring()
    {
        using var bed = new BlkTestBed(64 * Sector, fill: 0);
        using VirtioBlkDevice device = bed.CreateDevice();
        using var engine = new ManualEngine(device.Disk);
        using var queue = new BlkQueue(device, bed.Memory, engine, 256);
        queue.Start(Chain(9, bed.Header(VIRTIO_BLK_T_IN, 0), bed.Writable(Sector), bed.Status()), out _);

        Assert.That(
            () => queue.Start(Chain(9, bed.Header(VIRTIO_BLK_T_IN, 0), bed.Writable(Sector), bed.Status()), out _),
            Throws.InstanceOf<VirtqueueException>().With.Message.Contains("still in flight"));
    }

    [Test]
    public void A_short_transfer_continues_where_it_stopped_and_end_of_file_fails_the_request()
    {
        using var bed = new BlkTestBed(64 * Sector, fill: 0x33);
        using VirtioBlkDevice device = bed.CreateDevice();
        using var engine = new ManualEngine(device.Disk);
        using var queue = new BlkQueue(device, bed.Memory, engine, 256);
        var sink = new Sink();
        DescriptorSegment first = bed.Writable(2 * Sector);
        DescriptorSegment second = bed.Writable(2 * Sector);
        DescriptorSegment status = bed.Status();
        queue.Start(Chain(0, bed.Header(VIRTIO_BLK_T_IN, 0), first, second, status), out _);

        // The kernel moved 3 sectors of 4: the request goes on from the fourth, in the second buffer.
        engine.Finish(0, limit: 3 * Sector);
        queue.Reap(sink);
        Assert.That(sink.Heads, Is.Empty);
        Assert.That(engine.Started[^1].Offset, Is.EqualTo(3 * Sector));
        engine.Finish(0);
        queue.Reap(sink);
        Assert.That(sink.Lengths, Is.EqualTo(new[] { (4u * Sector) + 1 }));
        Assert.That(bed.ReadGuest(first).Concat(bed.ReadGuest(second)), Is.All.EqualTo(0x33));

        DescriptorSegment eofStatus = bed.Status();
        queue.Start(Chain(1, bed.Header(VIRTIO_BLK_T_IN, 0), bed.Writable(Sector), eofStatus), out _);
        engine.Finish(1, result: 0);
        queue.Reap(sink);
        Assert.That(bed.StatusOf(eofStatus), Is.EqualTo(VIRTIO_BLK_S_IOERR));
        Assert.That(sink.Lengths[^1], Is.EqualTo(1u), "no data on error");
    }

    [Test]
    public void Guest_buffers_misaligned_for_O_DIRECT_go_through_a_bounce_buffer_and_aligned_ones_do_not()
    {
        const int Large = BlkQueue.BounceSize + (40 * Sector);
        using var bed = new BlkTestBed(2L * Large, fill: 0);
        using VirtioBlkDevice device = bed.CreateDevice(cache: BlkCacheMode.None, aio: AioMode.IoUring);
        Assert.That(device.Disk.Direct, Is.True);
        Assert.That(device.Disk.MemoryAlignment, Is.GreaterThan(8u), "the test's misalignment must matter");

        // Aligned: page-aligned buffers straight to guest RAM.
        byte[] aligned = BlkTestBed.Pattern(8 * Sector, 1);
        var alignedBuffer = new DescriptorSegment(bed.AllocLow(8 * Sector, 4096), 8 * Sector, false);
        bed.Memory.Write(alignedBuffer.Address, aligned);
        DescriptorSegment status = bed.Status();
        device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_OUT, 0), alignedBuffer, status), bed.Memory);
        Assert.That(bed.StatusOf(status), Is.EqualTo(VIRTIO_BLK_S_OK));
        Assert.That(device.BouncedRequests, Is.Zero, "aligned buffers need no bounce");

        // Misaligned by 8 bytes, larger than one bounce buffer, in three pieces of odd lengths.
        byte[] data = BlkTestBed.Pattern(Large, 2);
        ulong at = bed.AllocLow((uint)Large + 4096, 4096) + 8;
        bed.Memory.Write(at, data);
        DescriptorSegment[] pieces =
        [
            new(at, 1000, false),
            new(at + 1000, (uint)(Large - 3000), false),
            new(at + (ulong)(Large - 2000), 2000, false),
        ];
        status = bed.Status();
        device.ProcessRequestForTest(0, BlkTestBed.Chain([bed.Header(VIRTIO_BLK_T_OUT, 16), .. pieces, status]), bed.Memory);
        Assert.That(bed.StatusOf(status), Is.EqualTo(VIRTIO_BLK_S_OK));
        Assert.That(bed.ReadFile(16 * Sector, Large), Is.EqualTo(data), "the file holds what the misaligned buffers held");
        Assert.That(device.BouncedRequests, Is.EqualTo(1));

        // And back into misaligned buffers.
        ulong into = bed.AllocLow((uint)Large + 4096, 4096) + 24;
        bed.Memory.Clear(into, (ulong)Large);
        status = bed.Status();
        uint written = device.ProcessRequestForTest(
            0,
            BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_IN, 16), new DescriptorSegment(into, 700, true), new DescriptorSegment(into + 700, (uint)Large - 700, true), status),
            bed.Memory);
        Assert.That(bed.StatusOf(status), Is.EqualTo(VIRTIO_BLK_S_OK));
        Assert.That(written, Is.EqualTo((uint)Large + 1));
        byte[] back = new byte[Large];
        bed.Memory.Read(into, back);
        Assert.That(back, Is.EqualTo(data));
        Assert.That(device.BouncedRequests, Is.EqualTo(2));
    }

    [Test]
    public void Without_io_uring_auto_falls_back_to_threads_and_the_device_works()
    {
        using var bed = new BlkTestBed(64 * Sector, fill: 0);
        var unavailable = new IoUringAvailability(false, "io_uring_setup failed: Function not implemented (errno 38)");
        using VirtioBlkDevice device = bed.CreateDevice(cache: BlkCacheMode.None, ioUring: unavailable);
        Assert.That(device.Engine.Kind, Is.EqualTo(IoEngineKind.Threads));
        Assert.That(device.Engine.Description, Does.Contain("io_uring unavailable").And.Contain("errno 38"));

        byte[] data = BlkTestBed.Pattern(4 * Sector, 3);
        DescriptorSegment status = bed.Status();
        device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_OUT, 4), bed.Readable(data), status), bed.Memory);
        Assert.That(bed.StatusOf(status), Is.EqualTo(VIRTIO_BLK_S_OK));
        Assert.That(bed.ReadFile(4 * Sector, data.Length), Is.EqualTo(data));

        Assert.That(
            () => bed.CreateDevice(aio: AioMode.IoUring, ioUring: unavailable),
            Throws.InstanceOf<IOException>().With.Message.Contains("io_uring is not available"));
    }

    [TestCase(512)]
    [TestCase(4096)]
    public void A_block_device_reports_its_block_size_and_takes_whole_blocks_only(int sectorSize)
    {
        LoopDevice? loop = LoopDevice.TryCreate(4 << 20, sectorSize, out string reason, fill: 0x11);
        if (loop is null)
        {
            Assert.Ignore(reason);
        }

        using (loop)
        {
            using var bed = new BlkTestBed(Sector);
            using var device = new VirtioBlkDevice(new VirtioBlkOptions(loop!.Path) { Cache = BlkCacheMode.None });
            VirtioBlkConfig config = device.Config;
            Assert.Multiple(() =>
            {
                Assert.That(device.Disk.IsBlockDevice, Is.True);
                Assert.That(device.CapacitySectors, Is.EqualTo((4 << 20) / Sector));
                Assert.That(config.BlkSize, Is.EqualTo(sectorSize));
                Assert.That(config.DiscardSectorAlignment, Is.EqualTo(sectorSize / Sector));
                Assert.That(device.DeviceFeatures & VirtioBlkFeatures.TOPOLOGY, Is.Not.Zero);
            });

            int sectorsPerBlock = sectorSize / Sector;
            byte[] data = BlkTestBed.Pattern(sectorSize, 4);
            DescriptorSegment buffer = new(bed.AllocLow((uint)sectorSize, 4096), (uint)sectorSize, false);
            bed.Memory.Write(buffer.Address, data);
            DescriptorSegment status = bed.Status();
            device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_OUT, (ulong)sectorsPerBlock * 3), buffer, status), bed.Memory);
            Assert.That(bed.StatusOf(status), Is.EqualTo(VIRTIO_BLK_S_OK));

            DescriptorSegment zeroStatus = bed.Status();
            device.ProcessRequestForTest(0, BlkTestBed.Chain(
                bed.Header(VIRTIO_BLK_T_WRITE_ZEROES, 0), bed.Ranges(new VirtioBlkDiscardWriteZeroes(0, (uint)sectorsPerBlock * 2, 0)), zeroStatus), bed.Memory);
            DescriptorSegment discardStatus = bed.Status();
            device.ProcessRequestForTest(0, BlkTestBed.Chain(
                bed.Header(VIRTIO_BLK_T_DISCARD, 0), bed.Ranges(new VirtioBlkDiscardWriteZeroes((ulong)sectorsPerBlock * 8, (uint)sectorsPerBlock * 8, 0)), discardStatus), bed.Memory);
            Assert.That(bed.StatusOf(zeroStatus), Is.EqualTo(VIRTIO_BLK_S_OK));
            Assert.That(bed.StatusOf(discardStatus), Is.EqualTo(VIRTIO_BLK_S_OK));

            if (sectorSize > Sector)
            {
                // 512-byte aligned but not block aligned: a real 4Kn disk refuses it, and so does the device.
                DescriptorSegment misaligned = bed.Status();
                device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_IN, 1), bed.Writable((uint)sectorSize), misaligned), bed.Memory);
                Assert.That(bed.StatusOf(misaligned), Is.EqualTo(VIRTIO_BLK_S_IOERR));
                DescriptorSegment shortWrite = bed.Status();
                device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_OUT, 0), bed.Readable(new byte[Sector]), shortWrite), bed.Memory);
                Assert.That(bed.StatusOf(shortWrite), Is.EqualTo(VIRTIO_BLK_S_IOERR));
            }

            device.Dispose();
            byte[] content = File.ReadAllBytes(loop.BackingFile);
            Assert.That(content.AsSpan(3 * sectorSize, sectorSize).ToArray(), Is.EqualTo(data));
            Assert.That(content.AsSpan(0, 2 * sectorSize).ToArray(), Is.All.Zero, "WRITE_ZEROES via BLKZEROOUT");
            Assert.That(content.AsSpan(8 * sectorSize, 8 * sectorSize).ToArray(), Is.All.Zero, "DISCARD via BLKDISCARD (a loop device punches its file)");
            Assert.That(content.AsSpan(2 * sectorSize, sectorSize).ToArray(), Is.All.EqualTo(0x11));
        }
    }

    private static DescriptorChain Chain(ushort head, params DescriptorSegment[] segments) => new(head, segments, (ushort)segments.Length);

    /// <summary>Records completions in order.</summary>
    private sealed class Sink : IBlkCompletionSink
    {
        public List<ushort> Heads { get; } = [];

        public List<uint> Lengths { get; } = [];

        public void Complete(DescriptorChain chain, uint bytesWritten)
        {
            Heads.Add(chain.Head);
            Lengths.Add(bytesWritten);
        }
    }

    /// <summary>
    /// An engine whose operations finish only when the test says, in the order it says; finishing
    /// one runs it on the real disk (or reports the result the test gives).
    /// </summary>
    private sealed unsafe class ManualEngine(DiskFile disk) : IIoEngine
    {
        private readonly Dictionary<ulong, IoRequest> _pending = [];
        private readonly Queue<IoCompletion> _finished = new();

        public List<IoRequest> Started { get; } = [];

        public IoEngineKind Kind => IoEngineKind.Threads;

        public int InFlight => _pending.Count + _finished.Count;

        public SafeFileDescriptor? CompletionHandle => null;

        public int StartedOperations(IoOperation operation) => Started.Count(r => r.Operation == operation);

        public bool Start(in IoRequest request, out int result)
        {
            Assert.That(_pending.ContainsKey(request.Tag), Is.False, $"request {request.Tag} has two operations in flight");
            _pending[request.Tag] = request;
            Started.Add(request);
            result = 0;
            return false;
        }

        /// <summary>Finishes request <paramref name="tag"/>'s operation: run for real (at most <paramref name="limit"/> bytes), or with <paramref name="result"/>.</summary>
        public void Finish(ulong tag, int? result = null, int? limit = null)
        {
            IoRequest request = _pending[tag];
            _pending.Remove(tag);
            IoVector* trimmed = stackalloc IoVector[Math.Max(request.VectorCount, 1)];
            if (result is null && limit is not null)
            {
                // A short transfer: the vectors cut to the first `limit` bytes.
                int left = limit.Value;
                int count = 0;
                for (int i = 0; i < request.VectorCount && left > 0; i++, count++)
                {
                    int take = Math.Min((int)request.Vectors[i].Length, left);
                    trimmed[i] = new IoVector(request.Vectors[i].Base, (nuint)take);
                    left -= take;
                }

                request.Vectors = trimmed;
                request.VectorCount = count;
            }

            _finished.Enqueue(new IoCompletion(tag, result ?? disk.Execute(request)));
        }

        public void Submit()
        {
        }

        public int Reap(Span<IoCompletion> completions)
        {
            int n = 0;
            while (n < completions.Length && _finished.TryDequeue(out IoCompletion done))
            {
                completions[n++] = done;
            }

            return n;
        }

        public void WaitForCompletion()
        {
        }

        public void Dispose()
        {
        }
    }
}
