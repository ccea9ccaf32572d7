using Akka.Actor;
using NUnit.Framework;
using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Machine;
using Vmm.Core.Memory;
using Vmm.Core.Posix;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;
using Vmm.TestKit;

namespace Vmm.VhostUser.Tests.Frontend;

[TestFixture]
public sealed class DeviceLifecycleTests : AkkaTest
{
    private const VhostUserProtocolFeatures Base = VhostUserProtocolFeatures.REPLY_ACK | VhostUserProtocolFeatures.CONFIG;

    private static readonly byte[] s_config = [.. Enumerable.Range(1, 60).Select(i => (byte)i)];


    [Test]
    public async Task Device_must_follow_guest_memory_changes_with_ADD_MEM_REG_and_REM_MEM_REG()
    {
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options());
        using ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync(protocolFeatures: Base | VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS, config: s_config);
        using VhostUserDevice device = await connect;

        using GuestMemory memory = GuestMemory.Create(1 << 20);
        using var kick = new EventFd();
        var resources = new VirtqueueResources(
            new VirtqueueParams(16, 0, 0x1000, 0x2000), memory, kick, FunctionBackedInterruptLine.ToController(0, CreateTestProbe().Ref));
        Task start = Task.Run(() => device.StartQueue(0, resources, ScriptedBackend.DefaultFeatures));
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_FEATURES);
        await backend.ExpectAndDropAsync(VhostUserRequest.ADD_MEM_REG);
        foreach (VhostUserRequest r in ScriptedBackend.RingStart.Skip(2))
        {
            await backend.ExpectAndDropAsync(r);
        }

        await start;

        GuestMemoryRegion added = memory.AddRegion(new GuestMemoryRange(1 << 24, 1 << 20));
        using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.ADD_MEM_REG))
        {
            Assert.That(m.Fds, Has.Count.EqualTo(1));
            Assert.That(VhostUserSingleMemoryRegion.Read(m.Payload.Span).Region.GuestPhysAddr, Is.EqualTo(1UL << 24));
        }

        using GuestMemoryRegion? removed = memory.RemoveRegion(added.GuestPhysicalAddress, added.Size);
        using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.REM_MEM_REG))
        {
            Assert.That(VhostUserSingleMemoryRegion.Read(m.Payload.Span).Region.GuestPhysAddr, Is.EqualTo(1UL << 24));
        }
    }

    [Test]
    public async Task Device_must_roll_back_a_refused_start_and_stay_usable()
    {
        int before = await ScriptedBackend.CountFdsAfterWarmUpAsync();
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options());
        using ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync(protocolFeatures: Base, config: s_config);
        VhostUserDevice device = await connect;

        GuestMemory memory = GuestMemory.Create(1 << 20);
        var kick = new EventFd();
        var resources = new VirtqueueResources(
            new VirtqueueParams(16, 0, 0x1000, 0x2000), memory, kick, FunctionBackedInterruptLine.ToController(0, CreateTestProbe().Ref));
        Task start = Task.Run(() => device.StartQueue(0, resources, ScriptedBackend.DefaultFeatures));
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_FEATURES);
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_MEM_TABLE);
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_NUM);
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ADDR, ack: 1);

        // Roll-back: the ring is stopped again.
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ENABLE);
        using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.GET_VRING_BASE))
        {
            var reply = new byte[VhostUserVringState.Size];
            new VhostUserVringState(0, 0).Write(reply);
            await backend.ReplyAsync(VhostUserRequest.GET_VRING_BASE, reply);
        }

        var e = await Assert.ThrowsAsync<VhostUserRequestFailedException>(() => start);
        Assert.That(e!.Request, Is.EqualTo(VhostUserRequest.SET_VRING_ADDR));

        // Still usable: a config write goes out as SET_CONFIG and patches the cached config.
        Task write = Task.Run(() => device.WriteConfig(4, new byte[] { 0xAA, 0xBB }));
        using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_CONFIG))
        {
            VhostUserConfigMessage parsed = VhostUserConfig.Parse(m.Payload.Span);
            Assert.That((parsed.Header.Offset, parsed.Data.ToArray()), Is.EqualTo((4u, new byte[] { 0xAA, 0xBB })));
        }

        await write;
        var data = new byte[4];
        await Task.Run(() => device.ReadConfig(3, data));
        Assert.That(data, Is.EqualTo(new byte[] { 4, 0xAA, 0xBB, 7 }));

        // The proxy call eventfd of the failed queue was closed with its VirtqueueActor.
        device.Dispose();
        backend.Dispose();
        memory.Dispose();
        kick.Dispose();
        DateTime deadline = DateTime.UtcNow.AddSeconds(5);
        while (ScriptedBackend.OpenFdCount() > before && DateTime.UtcNow < deadline)
        {
            await Task.Delay(20);
        }

        Assert.That(ScriptedBackend.OpenFdCount(), Is.LessThanOrEqualTo(before), () => "open: " + string.Join(", ", Vmm.TestKit.OpenDescriptors.Describe()));
    }

    [Test]
    public async Task Device_reset_must_stop_running_rings_when_RESET_DEVICE_is_not_negotiated()
    {
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options());
        using ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync(protocolFeatures: Base, config: s_config);
        using VhostUserDevice device = await connect;

        using GuestMemory memory = GuestMemory.Create(1 << 20);
        using var kick = new EventFd();
        var resources = new VirtqueueResources(
            new VirtqueueParams(16, 0, 0x1000, 0x2000), memory, kick, FunctionBackedInterruptLine.ToController(0, CreateTestProbe().Ref));
        Task start = Task.Run(() => device.StartQueue(0, resources, ScriptedBackend.DefaultFeatures));
        foreach (VhostUserRequest r in ScriptedBackend.RingStart)
        {
            await backend.ExpectAndDropAsync(r);
        }

        await start;
        Task reset = Task.Run(device.Reset);
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ENABLE);
        using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.GET_VRING_BASE))
        {
            var reply = new byte[VhostUserVringState.Size];
            new VhostUserVringState(0, 0).Write(reply);
            await backend.ReplyAsync(VhostUserRequest.GET_VRING_BASE, reply);
        }

        await reset;

        // After the reset the next start negotiates features and sends the memory table again.
        Task restart = Task.Run(() => device.StartQueue(0, resources, ScriptedBackend.DefaultFeatures));
        foreach (VhostUserRequest r in ScriptedBackend.RingStart)
        {
            await backend.ExpectAndDropAsync(r);
        }

        await restart;
    }

    [Test]
    public async Task Supervisor_must_treat_a_silent_backend_as_lost_and_reconnect()
    {
        var backends = new BackendFactory(requestTimeout: TimeSpan.FromMilliseconds(300));
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options());
        using ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync(protocolFeatures: Base, config: s_config);
        using VhostUserDevice device = await connect;

        Task write = Task.Run(() => device.WriteConfig(0, new byte[] { 1 }));
        using (VhostUserMessage ignored = await first.ExpectAsync(VhostUserRequest.SET_CONFIG, ack: null))
        {
            // No ack: the request runs past its deadline.
        }

        // The guest's write is not failed: it is kept in the snapshot and replayed to the next back-end.
        await write.WaitAsync(TimeSpan.FromSeconds(10));

        using ScriptedBackend second = await backends.NextAsync();
        await second.ServeHandshakeAsync(protocolFeatures: Base, config: s_config);
        using (VhostUserMessage m = await second.ExpectAsync(VhostUserRequest.SET_CONFIG))
        {
            Assert.That(m.Payload.Span[12], Is.EqualTo(1), "the config write, replayed");
        }

        await AwaitConditionAsync(async () =>
            (await device.Supervisor.Ask<ConnectionCount>(GetConnectionCount.Instance, RemainingOrDefault)).Ready == 2);
    }

    [Test]
    public async Task Supervisor_must_give_up_after_reconnect_max_attempts()
    {
        var failures = CreateTestProbe();
        Sys.EventStream.Subscribe(failures.Ref, typeof(DeviceFailed));
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options() with { ReconnectMax = 2 });
        ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync();
        using VhostUserDevice device = await connect;

        backends.Refuse = true;
        backend.Dispose();
        DeviceFailed failed = await failures.ExpectMsgAsync<DeviceFailed>(TimeSpan.FromSeconds(10));
        Assert.That(failed.Reason, Does.Contain("2 reconnect attempt(s) failed"));
        Assert.That(backends.Connects, Is.EqualTo(3));
    }

    [Test]
    public async Task Device_must_set_up_the_inflight_region_once_and_hand_the_same_one_to_a_new_backend()
    {
        const VhostUserProtocolFeatures features = Base | VhostUserProtocolFeatures.INFLIGHT_SHMFD;
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options());
        ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync(protocolFeatures: features, config: s_config);
        using VhostUserDevice device = await connect;

        using GuestMemory memory = GuestMemory.Create(1 << 20);
        using var kick = new EventFd();
        var resources = new VirtqueueResources(
            new VirtqueueParams(128, 0, 0x1000, 0x2000), memory, kick, FunctionBackedInterruptLine.ToController(0, CreateTestProbe().Ref));
        Task start = Task.Run(() => device.StartQueue(0, resources, ScriptedBackend.DefaultFeatures));
        using SafeFileDescriptor region = ScriptedBackend.NewFd();
        long inode = Inode(region);
        using (VhostUserMessage m = await first.ExpectAsync(VhostUserRequest.GET_INFLIGHT_FD))
        {
            VhostUserInflight asked = VhostUserInflight.Read(m.Payload.Span);
            Assert.That((asked.NumQueues, asked.QueueSize), Is.EqualTo(((ushort)1, (ushort)256)));
            var reply = new byte[VhostUserInflight.Size];
            new VhostUserInflight(4096, 0, 1, 256).Write(reply);
            await first.ReplyAsync(VhostUserRequest.GET_INFLIGHT_FD, reply, [region]);
        }

        using (VhostUserMessage m = await first.ExpectAsync(VhostUserRequest.SET_INFLIGHT_FD))
        {
            Assert.That(Inode(m.Fds[0]), Is.EqualTo(inode));
        }

        foreach (VhostUserRequest r in ScriptedBackend.RingStart)
        {
            await first.ExpectAndDropAsync(r);
        }

        await start;
        first.Dispose();

        using ScriptedBackend second = await backends.NextAsync();
        await second.ServeHandshakeAsync(protocolFeatures: features, config: s_config);
        using (VhostUserMessage m = await second.ExpectAsync(VhostUserRequest.SET_INFLIGHT_FD))
        {
            Assert.That(VhostUserInflight.Read(m.Payload.Span).MmapSize, Is.EqualTo(4096UL));
            Assert.That(Inode(m.Fds[0]), Is.EqualTo(inode), "the same region, not a new one");
        }

        foreach (VhostUserRequest r in ScriptedBackend.RingStart)
        {
            await second.ExpectAndDropAsync(r);
        }
    }

    private static long Inode(SafeFileDescriptor fd)
    {
        Assert.That(Mono.Unix.Native.Syscall.fstat((int)fd.DangerousGetHandle(), out Mono.Unix.Native.Stat stat), Is.Zero);
        return (long)stat.st_ino;
    }

    [Test]
    public void Backoff_must_grow_exponentially_with_jitter_and_stay_capped()
    {
        TimeSpan min = TimeSpan.FromMilliseconds(100), max = TimeSpan.FromSeconds(5);
        for (int i = 0; i < 100; i++)
        {
            Assert.That(VhostUserDeviceSupervisor.Backoff(0, min, max).TotalMilliseconds, Is.InRange(100, 120));
            Assert.That(VhostUserDeviceSupervisor.Backoff(3, min, max).TotalMilliseconds, Is.InRange(800, 960));
            Assert.That(VhostUserDeviceSupervisor.Backoff(1000, min, max).TotalMilliseconds, Is.InRange(5000, 6000));
        }
    }

    [TestCase("blk", VirtioDeviceId.Block)]
    [TestCase("net", VirtioDeviceId.Net)]
    [TestCase("console", VirtioDeviceId.Console)]
    [TestCase("rng", VirtioDeviceId.Entropy)]
    [TestCase("fs", VirtioDeviceId.FileSystem)]
    [TestCase("gpio", VirtioDeviceId.Gpio)]
    [TestCase("vsock", VirtioDeviceId.Socket)]
    [TestCase("scsi", VirtioDeviceId.Scsi)]
    [TestCase("input", VirtioDeviceId.Input)]
    [TestCase("gpu", VirtioDeviceId.Gpu)]
    [TestCase("i2c", VirtioDeviceId.I2cAdapter)]
    [TestCase("sound", VirtioDeviceId.Audio)]
    [TestCase("can", VirtioDeviceId.Can)]
    [TestCase("device-id=42", VirtioDeviceId.Rdma)]
    [TestCase("7", VirtioDeviceId.Rpmsg)]
    public void VhostUserDeviceType_must_map_names_to_device_ids(string text, VirtioDeviceId expected)
    {
        Assert.That(VhostUserDeviceType.Parse(text), Is.EqualTo(expected));
    }

    [TestCase("disk")]
    [TestCase("device-id=0")]
    [TestCase("device-id=x")]
    [TestCase("")]
    public void VhostUserDeviceType_must_reject_unknown_names(string text)
    {
        Assert.That(VhostUserDeviceType.TryParse(text, out _), Is.False);
        var e = Assert.Throws<ArgumentException>(() => VhostUserDeviceType.Parse(text));
        Assert.That(e!.Message, Does.Contain("blk"));
    }
}
