using System.Security.Cryptography;
using Vmm.Core.Events;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Protocol;
using static Vmm.VhostUser.Tests.Backend.ScriptedFrontend;

namespace Vmm.VhostUser.Tests.Backend;

[TestFixture]
[Category("Backend")]
public sealed class BackendProtocolTests
{
    private const ulong Base = VirtioFeatures.VERSION_1 | VhostUserVirtioFeatures.PROTOCOL_FEATURES;

    [Test]
    public async Task Handshake_offers_version_1_protocol_features_and_the_device_features()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();

        ulong features = await frontend.GetU64Async(VhostUserRequest.GET_FEATURES);
        ulong protocol = await frontend.GetU64Async(VhostUserRequest.GET_PROTOCOL_FEATURES);
        await frontend.SendAsync(VhostUserRequest.SET_PROTOCOL_FEATURES, U64(protocol));
        ulong queues = await frontend.GetU64Async(VhostUserRequest.GET_QUEUE_NUM);
        ulong slots = await frontend.GetU64Async(VhostUserRequest.GET_MAX_MEM_SLOTS);

        Assert.That(features & Base, Is.EqualTo(Base));
        Assert.That(features & backend.Device.DeviceFeatures, Is.EqualTo(backend.Device.DeviceFeatures));
        Assert.That((VhostUserProtocolFeatures)protocol, Is.EqualTo(VhostUserBackendOptionsImplemented));
        Assert.That(protocol >> 20, Is.Zero, "bits 20 and up are never offered");
        Assert.That(queues, Is.EqualTo(1UL));
        Assert.That(slots, Is.EqualTo(509UL));
    }

    private const VhostUserProtocolFeatures VhostUserBackendOptionsImplemented = Vmm.VhostUser.Backend.VhostUserBackendOptions.Implemented;

    [TestCase(0UL, TestName = "Linux_sequence_with_SET_MEM_TABLE_reads_and_writes_the_image(split)")]
    [TestCase(VirtioFeatures.RING_EVENT_IDX | VirtioFeatures.RING_INDIRECT_DESC, TestName = "Linux_sequence_with_SET_MEM_TABLE_reads_and_writes_the_image(split, event idx, indirect)")]
    [TestCase(VirtioFeatures.RING_PACKED, TestName = "Linux_sequence_with_SET_MEM_TABLE_reads_and_writes_the_image(packed)")]
    [TestCase(VirtioFeatures.RING_PACKED | VirtioFeatures.RING_EVENT_IDX | VirtioFeatures.RING_INDIRECT_DESC, TestName = "Linux_sequence_with_SET_MEM_TABLE_reads_and_writes_the_image(packed, event idx, indirect)")]
    public async Task Linux_sequence_with_SET_MEM_TABLE_reads_and_writes_the_image(ulong ringFeatures)
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        ulong features = Base | ringFeatures | VirtioBlkFeatures.FLUSH;
        BlkQueue queue = await frontend.StartDeviceAsync(128, features);

        byte[] sector0 = new byte[512];
        Assert.That(queue.Read(0, sector0), Is.Zero);
        Assert.That(sector0, Is.EqualTo(backend.OriginalImage.AsSpan(0, 512).ToArray()));

        byte[] pattern = RandomNumberGenerator.GetBytes(64 * 1024);
        for (int i = 0; i < 300; i++)
        {
            // More requests than the ring has slots: indices wrap and every one completes.
            Assert.That(queue.Write((ulong)(i % 32) * 128, pattern), Is.Zero);
        }

        await frontend.GetVringBaseAsync(0);
        byte[] image = File.ReadAllBytes(backend.ImagePath);
        Assert.That(image.AsSpan(31 * 128 * 512, pattern.Length).ToArray(), Is.EqualTo(pattern));
    }

    [Test]
    public async Task ADD_MEM_REG_instead_of_SET_MEM_TABLE_serves_io()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        await frontend.HandshakeAsync();
        await frontend.AddMemRegAsync();
        Assert.That(await frontend.AckAsync(VhostUserRequest.SET_FEATURES, U64(Base)), Is.Zero);
        BlkQueue queue = await frontend.StartQueueAsync(0, 64, Base);

        byte[] back = new byte[4096];
        Assert.That(queue.Read(16, back), Is.Zero);
        Assert.That(back, Is.EqualTo(backend.OriginalImage.AsSpan(16 * 512, 4096).ToArray()));
    }

    [Test]
    public async Task SeaBIOS_then_Linux_stop_and_restart_on_the_same_connection()
    {
        // QEMU 7.2: SeaBIOS starts the rings, stops them with GET_VRING_BASE, and Linux starts
        // them again on the same connection with a new SET_FEATURES, NUM, BASE, ADDR, KICK.
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        BlkQueue bios = await frontend.StartDeviceAsync(16, Base);
        byte[] buffer = new byte[512];
        for (int i = 0; i < 5; i++)
        {
            Assert.That(bios.Read((ulong)i, buffer), Is.Zero);
        }

        uint stoppedAt = await frontend.GetVringBaseAsync(0);
        Assert.That(stoppedAt, Is.EqualTo(5u), "five requests consumed");
        Assert.That(await frontend.GetVringBaseAsync(0), Is.EqualTo(5u), "a second GET_VRING_BASE answers the same");

        ulong linuxFeatures = Base | VirtioFeatures.RING_EVENT_IDX;
        Assert.That(await frontend.AckAsync(VhostUserRequest.SET_FEATURES, U64(linuxFeatures)), Is.Zero);
        BlkQueue linux = await frontend.StartQueueAsync(0, 128, linuxFeatures);
        byte[] pattern = RandomNumberGenerator.GetBytes(8192);
        Assert.That(linux.Write(100, pattern), Is.Zero);
        byte[] back = new byte[8192];
        Assert.That(linux.Read(100, back), Is.Zero);
        Assert.That(back, Is.EqualTo(pattern));
    }

    [Test]
    public async Task SET_VRING_CALL_before_SET_FEATURES_is_kept()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        await frontend.HandshakeAsync();
        using var earlyCall = new EventFd();
        Assert.That(await frontend.AckAsync(VhostUserRequest.SET_VRING_CALL, U64(0), [earlyCall.Handle]), Is.Zero);
        Assert.That(await frontend.SetMemTableAsync(), Is.Zero);
        Assert.That(await frontend.AckAsync(VhostUserRequest.SET_FEATURES, U64(Base)), Is.Zero);
        BlkQueue queue = await frontend.StartQueueAsync(0, 32, Base);

        Assert.That(queue.Read(0, new byte[512]), Is.Zero);
    }

    [Test]
    public async Task A_kick_before_enable_is_not_lost()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        await frontend.HandshakeAsync();
        Assert.That(await frontend.SetMemTableAsync(), Is.Zero);
        Assert.That(await frontend.AckAsync(VhostUserRequest.SET_FEATURES, U64(Base)), Is.Zero);
        var queue = new BlkQueue(frontend, Vmm.Virtio.Driver.DriverQueue.Create(frontend.Memory, frontend.Allocator, 32, Base));
        using (queue)
        {
            Assert.That(await frontend.AckAsync(VhostUserRequest.SET_VRING_NUM, State(0, 32)), Is.Zero);
            byte[] addr = new byte[VhostUserVringAddr.Size];
            new VhostUserVringAddr(0, 0, frontend.UserAddress(queue.Driver.Params.DescriptorArea), frontend.UserAddress(queue.Driver.Params.DeviceArea), frontend.UserAddress(queue.Driver.Params.DriverArea), 0).Write(addr);
            Assert.That(await frontend.AckAsync(VhostUserRequest.SET_VRING_ADDR, addr), Is.Zero);
            Assert.That(await frontend.AckAsync(VhostUserRequest.SET_VRING_BASE, State(0, 0)), Is.Zero);
            Assert.That(await frontend.AckAsync(VhostUserRequest.SET_VRING_KICK, U64(0), [queue.Kick.Handle]), Is.Zero);
            Assert.That(await frontend.AckAsync(VhostUserRequest.SET_VRING_CALL, U64(0), [queue.Call.Handle]), Is.Zero);

            // The request is made available and kicked while the ring is still disabled.
            ulong buffer = frontend.Allocator.Allocate(512, 512);
            var request = queue.Requests.TrySubmitRead(3, [new Vmm.Virtio.Driver.DriverBuffer(buffer, 512, true)])!;
            queue.Kick.Signal();
            Assert.That(queue.Call.Wait(200), Is.False, "nothing happens while disabled");

            Assert.That(await frontend.AckAsync(VhostUserRequest.SET_VRING_ENABLE, State(0, 1)), Is.Zero);
            Assert.That(queue.Call.Wait(10_000), Is.True, "the request completes once enabled");
            Assert.That(queue.Requests.TryComplete(out var done), Is.True);
            Assert.That(done, Is.SameAs(request));
            Assert.That(done!.Status, Is.Zero);
            byte[] back = new byte[512];
            frontend.Memory.Read(buffer, back);
            Assert.That(back, Is.EqualTo(backend.OriginalImage.AsSpan(3 * 512, 512).ToArray()));
        }
    }

    [Test]
    public async Task GET_VRING_BASE_ignores_a_junk_num()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        BlkQueue queue = await frontend.StartDeviceAsync(32, Base);
        Assert.That(queue.Read(0, new byte[512]), Is.Zero);
        Assert.That(queue.Read(1, new byte[512]), Is.Zero);

        Assert.That(await frontend.GetVringBaseAsync(0, junk: 0xdeadbeef), Is.EqualTo(2u));
    }

    [Test]
    public async Task GET_CONFIG_of_57_bytes_returns_the_blk_config()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        await frontend.HandshakeAsync();

        byte[] request = new byte[VhostUserConfig.HeaderSize + 57];
        new VhostUserConfig(0, 57, VhostUserConfigFlags.FRONTEND).Write(request);
        await frontend.SendAsync(VhostUserRequest.GET_CONFIG, request);
        using VhostUserMessage reply = await frontend.ReceiveAsync();

        Assert.That(reply.Header.PayloadSize, Is.EqualTo((uint)request.Length));
        VhostUserConfigMessage config = VhostUserConfig.Parse(reply.Payload.Span);
        Assert.That(config.Header.Size, Is.EqualTo(57u));
        Assert.That(BitConverter.ToUInt64(config.Data[..8]), Is.EqualTo((ulong)BackendFixture.ImageSize / 512), "capacity");
    }

    [Test]
    public async Task A_new_call_fd_on_a_running_ring_takes_effect()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        BlkQueue queue = await frontend.StartDeviceAsync(32, Base);
        Assert.That(queue.Read(0, new byte[512]), Is.Zero);

        // The interrupt for that request may land just after its used entry: let it settle.
        while (queue.Call.Wait(200))
        {
        }

        using var newCall = new EventFd();
        Assert.That(await frontend.AckAsync(VhostUserRequest.SET_VRING_CALL, U64(0), [newCall.Handle]), Is.Zero);
        ulong buffer = frontend.Allocator.Allocate(512, 512);
        queue.Requests.TrySubmitRead(1, [new Vmm.Virtio.Driver.DriverBuffer(buffer, 512, true)]);
        queue.Kick.Signal();

        Assert.That(newCall.Wait(10_000), Is.True, "the new call eventfd is signalled");
        Assert.That(queue.Call.TryConsume(), Is.False, "the old one is not");
    }

    [Test]
    public async Task Every_NEED_REPLY_is_answered_with_an_ack()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        await frontend.HandshakeAsync();

        Assert.That(await frontend.AckAsync(VhostUserRequest.SET_OWNER), Is.Zero);
        Assert.That(await frontend.AckAsync(VhostUserRequest.SET_STATUS, U64(0xf)), Is.Zero);
        Assert.That(await frontend.GetU64Async(VhostUserRequest.GET_STATUS), Is.EqualTo(0xfUL));
        Assert.That(await frontend.AckAsync(VhostUserRequest.RESET_DEVICE), Is.Zero);
        Assert.That(await frontend.AckAsync(VhostUserRequest.SET_VRING_ENABLE, State(0, 0)), Is.Zero);
        Assert.That(await frontend.AckAsync((VhostUserRequest)99), Is.Not.Zero, "an unknown request is NACKed");
        Assert.That(await frontend.GetU64Async(VhostUserRequest.GET_FEATURES), Is.Not.Zero, "and the connection kept");
    }

    [Test]
    public async Task The_next_frontend_is_served_after_one_disconnects_mid_io()
    {
        await using var backend = new BackendFixture();
        using (ScriptedFrontend first = await backend.ConnectAsync())
        {
            await first.HandshakeAsync();
            Assert.That(await first.SetMemTableAsync(), Is.Zero);
            Assert.That(await first.AckAsync(VhostUserRequest.SET_FEATURES, U64(Base)), Is.Zero);
            BlkQueue queue = await first.StartQueueAsync(0, 32, Base);
            ulong buffer = first.Allocator.Allocate(4096, 512);
            queue.SubmitWrite(0, buffer, 4096);
            queue.KickDevice();
        }

        await backend.AssertServesWellBehavedFrontendAsync();
    }

    [Test]
    public async Task GET_INFLIGHT_FD_returns_a_region_for_the_queues()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        await frontend.HandshakeAsync();
        byte[] request = new byte[VhostUserInflight.Size];
        new VhostUserInflight(0, 0, 1, 128).Write(request);

        await frontend.SendAsync(VhostUserRequest.GET_INFLIGHT_FD, request);
        using VhostUserMessage reply = await frontend.ReceiveAsync();

        VhostUserInflight inflight = VhostUserInflight.Read(reply.Payload.Span);
        Assert.That(reply.Fds, Has.Count.EqualTo(1));
        Assert.That(inflight.MmapSize, Is.EqualTo(Vmm.VhostUser.Inflight.InflightRegion.QueueRegionSize(128)));
        Assert.That(inflight.NumQueues, Is.EqualTo((ushort)1));
        Assert.That(Vmm.Core.Posix.MemFd.GetFileSize(reply.Fds[0]), Is.GreaterThanOrEqualTo(inflight.MmapSize));
    }
    [Test]
    public async Task Replacing_the_memory_table_while_a_ring_runs_keeps_its_position()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        BlkQueue queue = await frontend.StartDeviceAsync(32, Base);
        for (int i = 0; i < 3; i++)
        {
            Assert.That(queue.Read((ulong)i, new byte[512]), Is.Zero);
        }

        Assert.That(await frontend.SetMemTableAsync(), Is.Zero, "the same table sent again");
        byte[] back = new byte[512];
        Assert.That(queue.Read(40, back), Is.Zero);
        Assert.That(back, Is.EqualTo(backend.OriginalImage.AsSpan(40 * 512, 512).ToArray()));
        Assert.That(await frontend.GetVringBaseAsync(0), Is.EqualTo(4u), "no request lost or repeated across the swap");
    }

    [Test]
    public async Task A_disabled_ring_resumes_where_it_was_when_enabled_again()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        BlkQueue queue = await frontend.StartDeviceAsync(32, Base);
        Assert.That(queue.Read(0, new byte[512]), Is.Zero);

        Assert.That(await frontend.AckAsync(VhostUserRequest.SET_VRING_ENABLE, State(0, 0)), Is.Zero);
        Assert.That(await frontend.AckAsync(VhostUserRequest.SET_VRING_ENABLE, State(0, 1)), Is.Zero);

        Assert.That(queue.Read(1, new byte[512]), Is.Zero);
        Assert.That(await frontend.GetVringBaseAsync(0), Is.EqualTo(2u));
    }

    [Test]
    public async Task A_ring_with_no_kick_fd_is_polled()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        BlkQueue queue = await frontend.StartDeviceAsync(32, Base);

        // NOFD (bit 8): no kick eventfd any more; the back-end must find new buffers by itself.
        Assert.That(await frontend.AckAsync(VhostUserRequest.SET_VRING_KICK, U64(0x100)), Is.Zero);
        ulong buffer = frontend.Allocator.Allocate(512, 512);
        queue.Requests.TrySubmitRead(5, [new Vmm.Virtio.Driver.DriverBuffer(buffer, 512, true)]);

        Assert.That(queue.Call.Wait(10_000), Is.True, "completed without a kick");
        Assert.That(queue.Requests.TryComplete(out var done), Is.True);
        Assert.That(done!.Status, Is.Zero);
    }
}
