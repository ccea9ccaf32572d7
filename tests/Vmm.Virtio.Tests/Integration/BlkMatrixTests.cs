using Akka.Actor;
using NUnit.Framework;
using Vmm.Core.Posix.Storage;
using Vmm.Virtio.Devices.Blk;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Driver.Blk;
using Vmm.Virtio.Machine;
using Vmm.Virtio.Spec;
using Vmm.Virtio.Tests.Devices;
using Vmm.Core.Interrupts;

namespace Vmm.Virtio.Tests.Integration;

/// <summary>
/// The whole stack in every combination the guest driver can negotiate: discovery, the Linux
/// init sequence over mmio or pci registers, split or packed rings with and without EVENT_IDX
/// and indirect tables, and interrupts through the InterruptControllerActor or straight eventfds.
/// Writes a pattern with multi-buffer chains, flushes, reads it back and compares (guest memory and file).
/// </summary>
[TestFixture]
public sealed class BlkMatrixTests
{
    private const int Sector = VirtioBlk.SectorSize;
    private ActorSystem _system = null!;

    [OneTimeSetUp]
    public void StartSystem() => _system = ActorSystem.Create("blk-matrix");

    [OneTimeTearDown]
    public async Task StopSystem()
    {
        await _system.Terminate();
        _system.Dispose();
    }

    [Test, Combinatorial]
    public void Write_flush_read_back_through_the_whole_stack(
        [Values(VirtioTransportKind.Mmio, VirtioTransportKind.Pci)] VirtioTransportKind transport,
        [Values(false, true)] bool packed,
        [Values(false, true)] bool eventIndex,
        [Values(false, true)] bool indirect,
        [Values(GuestInterruptDelivery.FunctionBacked, GuestInterruptDelivery.EventBacked)] GuestInterruptDelivery delivery)
    {
        IActorRef? controller = delivery == GuestInterruptDelivery.FunctionBacked ? _system.ActorOf(InterruptControllerActor.Props()) : null;
        var options = new VirtioDriverOptions { PackedRing = packed, EventIndex = eventIndex, IndirectDescriptors = indirect, QueueSize = 64 };
        WriteFlushReadBack(transport, delivery, controller, options, BlkCacheMode.Writeback, AioMode.Auto);
        if (controller is not null)
        {
            _system.Stop(controller);
        }
    }

    /// <summary>
    /// The same through each cache mode and engine: with io_uring and threads the requests in
    /// flight complete in whatever order the disk finishes them, and the rings carry that order.
    /// </summary>
    [Test, Combinatorial]
    public void Write_flush_read_back_through_every_cache_mode_and_engine(
        [Values(BlkCacheMode.Writeback, BlkCacheMode.None, BlkCacheMode.Unsafe)] BlkCacheMode cache,
        [Values(AioMode.Inline, AioMode.Threads, AioMode.IoUring)] AioMode aio,
        [Values(false, true)] bool packed)
    {
        var options = new VirtioDriverOptions { PackedRing = packed, EventIndex = true, IndirectDescriptors = true, QueueSize = 128 };
        WriteFlushReadBack(VirtioTransportKind.Pci, GuestInterruptDelivery.EventBacked, null, options, cache, aio);
    }

    /// <summary>
    /// io_uring without deferred task work (what kernels before 6.1 give): the worker then sleeps in
    /// poll on its kick, its stop event and the ring's descriptor instead of in io_uring_enter.
    /// </summary>
    [Test]
    public void Write_flush_read_back_through_a_plain_io_uring_ring([Values(false, true)] bool packed)
    {
        var options = new VirtioDriverOptions { PackedRing = packed, EventIndex = true, IndirectDescriptors = true, QueueSize = 128 };
        WriteFlushReadBack(
            VirtioTransportKind.Pci,
            GuestInterruptDelivery.EventBacked,
            null,
            options,
            BlkCacheMode.None,
            AioMode.IoUring,
            device => device.EngineFactoryOverride = (disk, depth) => new IoUringIoEngine(disk, depth, deferTaskRun: false));
    }

    private static void WriteFlushReadBack(
        VirtioTransportKind transport,
        GuestInterruptDelivery delivery,
        IActorRef? controller,
        VirtioDriverOptions options,
        BlkCacheMode cache,
        AioMode aio,
        Action<VirtioBlkDevice>? configure = null)
    {
        const int requests = 96;
        const int blocks = 8;
        bool packed = options.PackedRing;
        bool eventIndex = options.EventIndex;
        bool indirect = options.IndirectDescriptors;
        using var bed = new BlkTestBed(requests * blocks * (long)Sector, fill: 0);
        using VirtioBlkDevice device = bed.CreateDevice(cache: cache, aio: aio);
        configure?.Invoke(device);
        using var guest = new MachineBlkGuest(device, transport, delivery, controller, options);

        ulong expectRing = (packed ? VirtioFeatures.RING_PACKED : 0) | (eventIndex ? VirtioFeatures.RING_EVENT_IDX : 0) | (indirect ? VirtioFeatures.RING_INDIRECT_DESC : 0);
        Assert.That(guest.Driver.NegotiatedFeatures & (VirtioFeatures.RING_PACKED | VirtioFeatures.RING_EVENT_IDX | VirtioFeatures.RING_INDIRECT_DESC), Is.EqualTo(expectRing));

        var done = new List<VirtioBlkRequest>();
        var data = new byte[requests][];
        ulong[] buffers = new ulong[requests];
        for (int i = 0; i < requests; i++)
        {
            data[i] = BlkTestBed.Pattern(blocks * Sector, 1000 + i);
            buffers[i] = guest.Allocator.Allocate(blocks * Sector, 4096);
            guest.Memory.Write(buffers[i], data[i]);
            ulong b = buffers[i];
            ulong sector = (ulong)(i * blocks);

            // Three buffers per request: header + 3 data + status = 5 descriptors (one with indirect tables).
            guest.Submit(
                r => r.TrySubmitWrite(sector, [new(b, Sector, false), new(b + Sector, 3 * Sector, false), new(b + (4 * Sector), 4 * Sector, false)]),
                done.Add);
        }

        guest.Submit(r => r.TrySubmitFlush(), done.Add);
        while (guest.InFlight > 0)
        {
            done.Add(guest.WaitOne());
        }

        Assert.That(done, Has.Count.EqualTo(requests + 1));
        Assert.That(done, Has.All.Property(nameof(VirtioBlkRequest.Succeeded)).True);

        done.Clear();
        for (int i = 0; i < requests; i++)
        {
            guest.Memory.Clear(buffers[i], blocks * Sector);
            ulong b = buffers[i];
            ulong sector = (ulong)(i * blocks);
            guest.Submit(r => r.TrySubmitRead(sector, [new(b, 2 * Sector, true), new(b + (2 * Sector), 6 * Sector, true)]), done.Add);
        }

        while (guest.InFlight > 0)
        {
            done.Add(guest.WaitOne());
        }

        Assert.Multiple(() =>
        {
            Assert.That(done, Has.Count.EqualTo(requests));
            Assert.That(done, Has.All.Property(nameof(VirtioBlkRequest.Succeeded)).True);
            Assert.That(done.Select(r => r.BytesWritten), Is.All.EqualTo((uint)(blocks * Sector) + 1));
            for (int i = 0; i < requests; i++)
            {
                byte[] back = new byte[blocks * Sector];
                guest.Memory.Read(buffers[i], back);
                Assert.That(back, Is.EqualTo(data[i]), $"request {i} in guest memory");
            }

            Assert.That(bed.ReadWholeFile(), Is.EqualTo(data.SelectMany(d => d).ToArray()), "the image");
        });
    }
}
