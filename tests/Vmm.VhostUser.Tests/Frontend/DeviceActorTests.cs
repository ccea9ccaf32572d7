using System.Net.Sockets;
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
public sealed class DeviceActorTests : AkkaTest
{
    private const VhostUserProtocolFeatures Offered =
        VhostUserProtocolFeatures.MQ | VhostUserProtocolFeatures.REPLY_ACK | VhostUserProtocolFeatures.CONFIG |
        VhostUserProtocolFeatures.RESET_DEVICE;

    private static readonly byte[] s_config = [.. Enumerable.Range(1, 60).Select(i => (byte)i)];

    [Test]
    public async Task VhostUserDevice_must_complete_ConnectAsync_after_the_handshake()
    {
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options());
        using ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync(protocolFeatures: Offered, queueNum: 2, config: s_config);
        using VhostUserDevice device = await connect;

        Assert.That(device.DeviceId, Is.EqualTo(VirtioDeviceId.Block));
        Assert.That(device.DeviceFeatures, Is.EqualTo(ScriptedBackend.DefaultFeatures & ~(1UL << 30)), "vhost-only bits hidden");
        Assert.That(device.QueueCount, Is.EqualTo(2));
        Assert.That(device.ConfigSize, Is.EqualTo(60));

        // Config reads inside the cached config send nothing.
        var data = new byte[4];
        await Task.Run(() => device.ReadConfig(8, data));
        Assert.That(data, Is.EqualTo(new byte[] { 9, 10, 11, 12 }));
    }

    [Test]
    public async Task VhostUserDevice_must_start_and_stop_a_queue_and_proxy_calls_of_a_function_backed_line()
    {
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options());
        using ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        using VhostUserDevice device = await connect;

        using GuestMemory memory = GuestMemory.Create(1 << 20);
        using var kick = new EventFd();
        var controller = CreateTestProbe();
        var line = FunctionBackedInterruptLine.ToController(3, controller.Ref);
        var resources = new VirtqueueResources(new VirtqueueParams(64, 0x1000, 0x2000, 0x3000), memory, kick, line);

        Task start = Task.Run(() => device.StartQueue(0, resources, ScriptedBackend.DefaultFeatures & ~(1UL << 30)));
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_FEATURES);
        using (VhostUserMessage table = await backend.ExpectAsync(VhostUserRequest.SET_MEM_TABLE))
        {
            Assert.That(table.Fds, Has.Count.EqualTo(1));
        }

        await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_NUM);
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ADDR);
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_BASE);
        VhostUserMessage callMessage = await backend.ExpectAsync(VhostUserRequest.SET_VRING_CALL);
        using var call = new EventFd(callMessage.TakeFd(0));
        callMessage.Dispose();
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_KICK);

        await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ENABLE);
        await start;

        // The back-end signals the call eventfd: the notifier loop raises the line.
        call.Signal();
        await controller.ExpectMsgAsync<RaiseInterrupt>(m => Assert.That(m.Vector, Is.EqualTo(3)));
        call.Signal();
        await controller.ExpectMsgAsync<RaiseInterrupt>();

        memory.WriteUInt16(0x3000 + 2, 4);
        Task<VirtqueueState?> stop = Task.Run(() => device.StopQueue(0));
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ENABLE);
        using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.GET_VRING_BASE))
        {
            var reply = new byte[VhostUserVringState.Size];
            new VhostUserVringState(0, 4).Write(reply);
            await backend.ReplyAsync(VhostUserRequest.GET_VRING_BASE, reply);
        }

        Assert.That(await stop, Is.EqualTo(new VirtqueueState(4, 4)));
        Assert.That(await Task.Run(() => device.StopQueue(0)), Is.EqualTo(new VirtqueueState(4, 4)), "safe to call twice");
    }

    [Test]
    public async Task VhostUserDevice_must_hand_an_event_backed_line_its_own_eventfd()
    {
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options());
        using ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync(ScriptedBackend.DefaultFeatures & ~(1UL << 30));
        using VhostUserDevice device = await connect;

        using GuestMemory memory = GuestMemory.Create(1 << 20);
        using var kick = new EventFd();
        using var irq = new EventFd();
        var resources = new VirtqueueResources(new VirtqueueParams(16, 0, 0x1000, 0x2000), memory, kick, new EventBackedInterruptLine(1, irq));
        Task start = Task.Run(() => device.StartQueue(0, resources, ScriptedBackend.DefaultFeatures));
        foreach (VhostUserRequest r in new[] { VhostUserRequest.SET_FEATURES, VhostUserRequest.SET_MEM_TABLE, VhostUserRequest.SET_VRING_NUM, VhostUserRequest.SET_VRING_ADDR, VhostUserRequest.SET_VRING_BASE })
        {
            await backend.ExpectAndDropAsync(r);
        }

        using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_VRING_CALL))
        using (var received = new EventFd(m.TakeFd(0)))
        {
            received.Signal();
            Assert.That(irq.Wait(2000), Is.True, "the line's eventfd itself, no proxy");
        }

        using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_VRING_KICK))
        using (var received = new EventFd(m.TakeFd(0)))
        {
            received.Signal();
            Assert.That(kick.Wait(2000), Is.True, "the transport's kick eventfd itself");
        }

        // Without PROTOCOL_FEATURES the ring starts enabled: no SET_VRING_ENABLE.
        await start;
        Assert.That(backend.Log, Does.Not.Contain(VhostUserRequest.SET_VRING_ENABLE));
    }

    [Test]
    public async Task Supervisor_must_reconnect_after_connection_loss_and_replay_the_snapshot()
    {
        var backends = new BackendFactory();
        VhostUserDeviceOptions options = backends.Options() with { ReconnectMinBackoff = TimeSpan.FromMilliseconds(10) };
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, options);
        ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        using VhostUserDevice device = await connect;

        using GuestMemory memory = GuestMemory.Create(1 << 20);
        using var kick = new EventFd();
        var line = FunctionBackedInterruptLine.ToController(0, CreateTestProbe().Ref);
        var resources = new VirtqueueResources(new VirtqueueParams(64, 0x1000, 0x2000, 0x3000), memory, kick, line);
        Task start = Task.Run(() => device.StartQueue(0, resources, ScriptedBackend.DefaultFeatures));
        foreach (VhostUserRequest r in ScriptedBackend.RingStart)
        {
            await first.ExpectAndDropAsync(r);
        }

        await start;

        // The back-end dies; the guest had seen 12 used buffers.
        memory.WriteUInt16(0x3000 + 2, 12);
        first.Dispose();

        using ScriptedBackend second = await backends.NextAsync();
        await second.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        await second.ExpectAndDropAsync(VhostUserRequest.SET_FEATURES);
        await second.ExpectAndDropAsync(VhostUserRequest.SET_MEM_TABLE);
        await second.ExpectAndDropAsync(VhostUserRequest.SET_VRING_NUM);
        await second.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ADDR);
        using (VhostUserMessage m = await second.ExpectAsync(VhostUserRequest.SET_VRING_BASE))
        {
            Assert.That(VhostUserVringState.Read(m.Payload.Span).Num, Is.EqualTo(12u), "base from the used ring in guest memory");
        }

        await second.ExpectAndDropAsync(VhostUserRequest.SET_VRING_CALL);
        await second.ExpectAndDropAsync(VhostUserRequest.SET_VRING_KICK);
        await second.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ENABLE);

        // Polled with a condition: a failed NUnit assertion is recorded even when caught and retried.
        await AwaitConditionAsync(async () =>
            await device.Supervisor.Ask<ConnectionCount>(GetConnectionCount.Instance, RemainingOrDefault) == new ConnectionCount(2, 2));
    }

    [Test]
    public async Task Supervisor_must_give_up_on_a_protocol_violation_report_DeviceFailed_and_connect_again_only_after_a_reset()
    {
        var failures = CreateTestProbe();
        Sys.EventStream.Subscribe(failures.Ref, typeof(DeviceFailed));
        IActorRef vm = Sys.ActorOf(VmActor.Props(), "vm");
        var backends = new BackendFactory();
        VhostUserDeviceOptions options = backends.Options() with { Name = "blk0" };
        TaskCompletionSource<DeviceInfo> firstReady = VhostUserDevice.CreateFirstReady();
        var events = new VhostUserDeviceEvents();
        DeviceAttached attached = await vm.Ask<DeviceAttached>(new AttachDevice("blk0", VhostUserDeviceSupervisor.Props(options, firstReady, events)));
        Task<VhostUserDevice> wrap = VhostUserDevice.FromSupervisorAsync(attached.Device, options, firstReady.Task, events: events);
        using ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        using VhostUserDevice device = await wrap;
        var faulted = new TaskCompletionSource<Vmm.Virtio.DeviceFault>(TaskCreationOptions.RunContinuationsAsynchronously);
        device.Faulted += f => faulted.TrySetResult(f);

        Task reset = Task.Run(device.Reset);
        using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.RESET_DEVICE, ack: null))
        {
            await backend.ReplyRawAsync((uint)VhostUserRequest.RESET_DEVICE, 0x1, BitConverter.GetBytes(0UL));
        }

        await Assert.ThrowsAsync<VhostUserProtocolException>(async () => await reset);
        DeviceFailed failed = await failures.ExpectMsgAsync<DeviceFailed>();
        Assert.That(failed.Name, Is.EqualTo("blk0"));
        Assert.That(failed.Reason, Does.Contain("flags 0x1"));
        await faulted.Task.WaitAsync(TimeSpan.FromSeconds(10));

        // Stopped, not restarted: the supervisor lives on, serving from its snapshot, but makes no
        // new connection on its own.
        Assert.That(await device.Supervisor.Ask<ConnectionCount>(GetConnectionCount.Instance, RemainingOrDefault), Is.EqualTo(new ConnectionCount(1, 1)));
        Assert.That(device.IsConnected, Is.False);
        var config = new byte[4];
        device.ReadConfig(0, config);
        Assert.That(config, Is.EqualTo(s_config[..4]), "config served from the last known config");
        Assert.That(backends.Connects, Is.EqualTo(1));

        // Still attached (it answers), listed once: as failed, until the guest's reset brings it back.
        Devices devices = await vm.Ask<Devices>(GetDevices.Instance);
        Assert.That(devices.Live, Is.Empty);
        Assert.That(devices.Failed.Select(f => f.Name), Is.EqualTo(new[] { "blk0" }));

        // The guest's reset (what it does on DEVICE_NEEDS_RESET): answered at once, then a fresh connection.
        device.Reset();
        using ScriptedBackend second = await backends.NextAsync();
        await second.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        await AwaitConditionAsync(async () =>
            await device.Supervisor.Ask<ConnectionCount>(GetConnectionCount.Instance, RemainingOrDefault) == new ConnectionCount(2, 2));
        Assert.That(device.IsConnected, Is.True);
        await AwaitConditionAsync(async () => (await vm.Ask<Devices>(GetDevices.Instance)).Live.ContainsKey("blk0"));
        Assert.That((await vm.Ask<Devices>(GetDevices.Instance)).Failed, Is.Empty, "recovered: no longer listed as failed");
    }

    [Test]
    public async Task Supervisor_must_give_up_on_connection_loss_when_reconnect_is_off_and_answer_from_the_snapshot()
    {
        var failures = CreateTestProbe();
        Sys.EventStream.Subscribe(failures.Ref, typeof(DeviceFailed));
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options() with { Reconnect = false });
        ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync();
        using VhostUserDevice device = await connect;
        var faulted = new TaskCompletionSource<Vmm.Virtio.DeviceFault>(TaskCreationOptions.RunContinuationsAsynchronously);
        device.Faulted += f => faulted.TrySetResult(f);

        using GuestMemory memory = GuestMemory.Create(1 << 20);
        using var kick = new EventFd();
        var resources = new VirtqueueResources(
            new VirtqueueParams(64, 0x1000, 0x2000, 0x3000), memory, kick, FunctionBackedInterruptLine.ToController(0, CreateTestProbe().Ref));
        Task start = Task.Run(() => device.StartQueue(0, resources, ScriptedBackend.DefaultFeatures & ~(1UL << 30)));
        foreach (VhostUserRequest r in ScriptedBackend.RingStart.SkipLast(1))
        {
            await backend.ExpectAndDropAsync(r);
        }

        await start;
        memory.WriteUInt16(0x3000 + 2, 5);
        backend.Dispose();
        DeviceFailed failed = await failures.ExpectMsgAsync<DeviceFailed>(TimeSpan.FromSeconds(10));
        Assert.That(failed.Reason, Does.Contain("reconnect is off"));
        Assert.That((await faulted.Task.WaitAsync(TimeSpan.FromSeconds(10))).Reason, Does.Contain("reconnect is off"));

        // Given up, not gone: the guest's stop is answered from the snapshot (the used index in
        // guest memory), without a new connection.
        VirtqueueState? stopped = await Task.Run(() => device.StopQueue(0)).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.That(stopped, Is.EqualTo(new VirtqueueState(5, 5)));
        Assert.That(device.IsConnected, Is.False);
        Assert.That(backends.Connects, Is.EqualTo(1));
    }

    [Test]
    public async Task ConnectAsync_must_connect_to_a_path_socket()
    {
        string path = Path.Combine(Path.GetTempPath(), $"frontend-{Guid.NewGuid():N}.sock");
        using VhostUserListener listener = VhostUserListener.Bind(path);
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(
            Sys, new VhostUserDeviceOptions(path, VirtioDeviceId.Block) { Name = "blk-path" });
        using var backend = new ScriptedBackend(await listener.AcceptAsync());
        await backend.ServeHandshakeAsync(protocolFeatures: Offered, queueNum: 1, config: s_config);
        using VhostUserDevice device = await connect;
        Assert.That(device.Info.Config, Is.EqualTo(s_config));
        Assert.That(device.Supervisor.Path.Name, Is.EqualTo("blk-path"));
    }

    [Test]
    public async Task ConnectAsync_must_say_when_the_socket_is_missing()
    {
        string path = Path.Combine(Path.GetTempPath(), $"missing-{Guid.NewGuid():N}.sock");
        var e = await Assert.ThrowsAsync<VhostUserConnectException>(
            () => VhostUserDevice.ConnectAsync(Sys, new VhostUserDeviceOptions(path, VirtioDeviceId.Block)));
        Assert.That(e!.Failure, Is.EqualTo(VhostUserConnectFailure.SocketMissing));
        Assert.That(e.Message, Is.EqualTo($"vhost-user socket {path} does not exist."));
    }

    [Test]
    public async Task ConnectAsync_must_say_when_the_connection_is_refused()
    {
        string path = Path.Combine(Path.GetTempPath(), $"refused-{Guid.NewGuid():N}.sock");
        // Bound but not listening: connect(2) gets ECONNREFUSED.
        using var bound = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        bound.Bind(new UnixDomainSocketEndPoint(path));
        try
        {
            var e = await Assert.ThrowsAsync<VhostUserConnectException>(
                () => VhostUserDevice.ConnectAsync(Sys, new VhostUserDeviceOptions(path, VirtioDeviceId.Block)));
            Assert.That(e!.Failure, Is.EqualTo(VhostUserConnectFailure.ConnectionRefused));
            Assert.That(e.Message, Does.Contain("refused"));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Test]
    public async Task ConnectAsync_must_say_when_the_backend_hangs_up_during_the_handshake()
    {
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options());
        ScriptedBackend backend = await backends.NextAsync();
        await backend.ExpectAndDropAsync(VhostUserRequest.GET_FEATURES);
        backend.Dispose();
        var e = await Assert.ThrowsAsync<VhostUserConnectException>(() => connect);
        Assert.That(e!.Failure, Is.EqualTo(VhostUserConnectFailure.HungUpDuringHandshake));
        Assert.That(backends.Connects, Is.EqualTo(1), "no reconnect before the first handshake succeeded");
    }

    [Test]
    public async Task ConnectAsync_must_say_when_the_backend_stops_answering_during_the_handshake()
    {
        var backends = new BackendFactory(requestTimeout: TimeSpan.FromMilliseconds(200));
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options());
        using ScriptedBackend backend = await backends.NextAsync();
        await backend.ExpectAndDropAsync(VhostUserRequest.GET_FEATURES);
        var e = await Assert.ThrowsAsync<VhostUserConnectException>(() => connect);
        Assert.That(e!.Failure, Is.EqualTo(VhostUserConnectFailure.HandshakeTimeout));
        Assert.That(e.Message, Does.Contain("GET_FEATURES"));
    }

    [Test]
    public async Task ConnectAsync_must_refuse_a_backend_without_VERSION_1()
    {
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options());
        using ScriptedBackend backend = await backends.NextAsync();
        await backend.ExpectGetU64Async(VhostUserRequest.GET_FEATURES, 1UL << 30);
        var e = await Assert.ThrowsAsync<VhostUserIncompatibleBackendException>(() => connect);
        Assert.That(e!.Message, Does.Contain("back-end offers no VERSION_1"));
    }

}
