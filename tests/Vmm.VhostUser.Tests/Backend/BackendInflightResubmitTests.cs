using Vmm.Virtio.Driver;
using Vmm.Virtio.Driver.Blk;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Inflight;
using Vmm.VhostUser.Protocol;
using static Vmm.VhostUser.Tests.Backend.ScriptedFrontend;

namespace Vmm.VhostUser.Tests.Backend;

/// <summary>A back-end started over an inflight region that a dead back-end left behind.</summary>
[TestFixture]
[Category("Backend")]
public sealed class BackendInflightResubmitTests
{
    private const ulong Features = VirtioFeatures.VERSION_1 | VhostUserVirtioFeatures.PROTOCOL_FEATURES;

    [Test]
    public async Task Backend_must_run_each_request_left_in_flight_exactly_once_and_resume_the_ring_after_them()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        await frontend.HandshakeAsync(Vmm.VhostUser.Backend.VhostUserBackendOptions.Implemented);
        Assert.That(await frontend.SetMemTableAsync(), Is.Zero);
        Assert.That(await frontend.AckAsync(VhostUserRequest.SET_FEATURES, U64(Features)), Is.Zero);
        using var queue = new BlkQueue(frontend, DriverQueue.Create(frontend.Memory, frontend.Allocator, 64, Features));

        // Two writes the dead back-end had popped and not completed: in the avail ring after the
        // used index (0), and marked in flight in the region.
        byte[] first = [.. Enumerable.Repeat((byte)0x11, 4096)];
        byte[] second = [.. Enumerable.Repeat((byte)0x22, 4096)];
        ulong a = frontend.Allocator.Allocate(4096, 512), b = frontend.Allocator.Allocate(4096, 512);
        frontend.Memory.Write(a, first);
        frontend.Memory.Write(b, second);
        VirtioBlkRequest r1 = queue.SubmitWrite(0, a, 4096);
        VirtioBlkRequest r2 = queue.SubmitWrite(8, b, 4096);
        ulong availRing = queue.Driver.Params.DriverArea + 4;
        ushort head1 = frontend.Memory.ReadUInt16(availRing), head2 = frontend.Memory.ReadUInt16(availRing + 2);
        using InflightRegion region = InflightRegion.Create(1, 64);
        Assert.That(region.Queue(0).Recover(0), Is.Empty);
        region.Queue(0).OnPopped(head1);
        region.Queue(0).OnPopped(head2);

        byte[] inflight = new byte[VhostUserInflight.Size];
        new VhostUserInflight(region.MmapSize, 0, 1, 64).Write(inflight);
        Assert.That(await frontend.AckAsync(VhostUserRequest.SET_INFLIGHT_FD, inflight, [region.Fd]), Is.Zero);
        await frontend.StartQueueAsync(0, 64, Features, availableBase: 0, reuse: queue);

        Assert.That(queue.Complete(r1), Is.Zero);
        Assert.That(queue.Complete(r2), Is.Zero);
        byte[] third = [.. Enumerable.Repeat((byte)0x33, 4096)];
        Assert.That(queue.Write(16, third), Is.Zero);

        // Three requests, three used entries: nothing ran twice.
        Assert.That(frontend.Memory.ReadUInt16(queue.Driver.Params.DeviceArea + 2), Is.EqualTo(3));
        Assert.That(region.Queue(0).CountInflight(), Is.Zero);
        Assert.That(await frontend.GetVringBaseAsync(0), Is.EqualTo(3u));
        byte[] image = File.ReadAllBytes(backend.ImagePath);
        Assert.That(image.AsSpan(0, 4096).ToArray(), Is.EqualTo(first));
        Assert.That(image.AsSpan(4096, 4096).ToArray(), Is.EqualTo(second));
        Assert.That(image.AsSpan(8192, 4096).ToArray(), Is.EqualTo(third));
    }
}
