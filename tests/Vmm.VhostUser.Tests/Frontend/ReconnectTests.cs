using Akka.Actor;
using NUnit.Framework;
using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;
using Vmm.Core.Posix;
using Vmm.Virtio;
using Vmm.Virtio.Queues;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;
using Vmm.TestKit;

namespace Vmm.VhostUser.Tests.Frontend;

/// <summary>
/// The supervisor's reconnect behaviour against scripted back-ends: replay order, backoff
/// intervals, commands served while no back-end is connected, and back-ends that die at each
/// step of a reconnect.
/// </summary>
[TestFixture]
public sealed class ReconnectTests : AkkaTest
{
    private const VhostUserProtocolFeatures Offered =
        VhostUserProtocolFeatures.REPLY_ACK | VhostUserProtocolFeatures.CONFIG | VhostUserProtocolFeatures.INFLIGHT_SHMFD;

    private static readonly byte[] s_config = [.. Enumerable.Range(1, 60).Select(i => (byte)i)];


    [Test]
    public async Task Supervisor_must_replay_inflight_features_memory_rings_with_call_before_kick_and_config_before_enable()
    {
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options());
        ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        using VhostUserDevice device = await connect;
        using var rig = new TestRing(FunctionBackedInterruptLine.ToController(0, CreateTestProbe().Ref));

        Task start = Task.Run(() => device.StartQueue(0, rig.Resources, ScriptedBackend.DefaultFeatures));
        await ServeInflightAsync(first);
        foreach (VhostUserRequest r in ScriptedBackend.RingStart)
        {
            await first.ExpectAndDropAsync(r);
        }

        await start;
        Task write = Task.Run(() => device.WriteConfig(8, [0xAB]));
        await first.ExpectAndDropAsync(VhostUserRequest.SET_CONFIG);
        await write;
        var lost = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var restored = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        device.ConnectionLost += r => lost.TrySetResult(r);
        device.ConnectionRestored += a => restored.TrySetResult(a);

        // The guest saw 12 used buffers; the back-end dies. A kick made meanwhile stays in the eventfd.
        rig.SetUsedIndex(12);
        first.Dispose();
        await lost.Task.WaitAsync(TimeSpan.FromSeconds(10));
        _ = rig.Kick.TryConsume();

        using ScriptedBackend second = await backends.NextAsync();
        await second.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        var order = new List<VhostUserRequest>();
        for (int i = 0; i < 10; i++)
        {
            using VhostUserMessage m = await second.ReceiveAsync();
            order.Add((VhostUserRequest)m.Header.Request);
            if ((VhostUserRequest)m.Header.Request == VhostUserRequest.SET_VRING_BASE)
            {
                Assert.That(VhostUserVringState.Read(m.Payload.Span).Num, Is.EqualTo(12u), "split ring: base from the used index in guest memory");
            }

            if ((VhostUserRequest)m.Header.Request == VhostUserRequest.SET_CONFIG)
            {
                Assert.That(m.Payload.Span[VhostUserConfig.HeaderSize], Is.EqualTo(0xAB));
            }

            if (VhostUserCodec.NeedsReply(m.Header))
            {
                await second.ReplyU64Async((VhostUserRequest)m.Header.Request, 0);
            }
        }

        Assert.That(order, Is.EqualTo(new[]
        {
            VhostUserRequest.SET_INFLIGHT_FD, VhostUserRequest.SET_FEATURES, VhostUserRequest.SET_MEM_TABLE,
            VhostUserRequest.SET_VRING_NUM, VhostUserRequest.SET_VRING_ADDR, VhostUserRequest.SET_VRING_BASE,
            VhostUserRequest.SET_VRING_CALL, VhostUserRequest.SET_VRING_KICK, VhostUserRequest.SET_CONFIG,
            VhostUserRequest.SET_VRING_ENABLE,
        }));
        Assert.That(await restored.Task.WaitAsync(TimeSpan.FromSeconds(10)), Is.EqualTo(1));

        // After the replay the kick is signalled once more, so the new back-end looks at the ring.
        await AwaitConditionAsync(() => rig.Kick.TryConsume());
    }

    [Test]
    public async Task Supervisor_must_back_off_exponentially_with_bounded_jitter_and_a_capped_interval_without_giving_up()
    {
        var scheduled = CreateTestProbe();
        Sys.EventStream.Subscribe(scheduled.Ref, typeof(DeviceConnectionLost));
        Sys.EventStream.Subscribe(scheduled.Ref, typeof(DeviceConnectionRestored));
        var backends = new BackendFactory();
        VhostUserDeviceOptions options = backends.Options() with
        {
            ReconnectMinBackoff = TimeSpan.FromMilliseconds(10),
            ReconnectMaxBackoff = TimeSpan.FromMilliseconds(80),
        };
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, options);
        ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync();
        using VhostUserDevice device = await connect;

        backends.Refuse = true;
        first.Dispose();
        double previous = 0;
        for (int attempt = 1; attempt <= 10; attempt++)
        {
            DeviceConnectionLost s = await scheduled.ExpectMsgAsync<DeviceConnectionLost>(TimeSpan.FromSeconds(10));
            Assert.That(s.Attempt, Is.EqualTo(attempt));
            double nominal = Math.Min(80, 10 * Math.Pow(2, attempt - 1));
            Assert.That(s.Delay.TotalMilliseconds, Is.InRange(nominal, nominal * 1.2), $"attempt {attempt}");
            if (nominal < 80)
            {
                Assert.That(s.Delay.TotalMilliseconds, Is.GreaterThan(previous), "growing until the cap");
            }

            previous = s.Delay.TotalMilliseconds;
        }

        backends.Refuse = false;
        ScriptedBackend second = await backends.NextAsync();
        await second.ServeHandshakeAsync();
        DeviceConnectionRestored restored = await scheduled.FishForMessageAsync<DeviceConnectionRestored>(_ => true, TimeSpan.FromSeconds(10));
        Assert.That(restored.Attempts, Is.GreaterThanOrEqualTo(10));
        second.Dispose();
    }

    [Test]
    public async Task A_socket_that_appears_while_an_attempt_is_under_way_makes_the_next_attempt_quick_not_the_backoffs()
    {
        var events = CreateTestProbe();
        Sys.EventStream.Subscribe(events.Ref, typeof(DeviceConnectionLost));
        Sys.EventStream.Subscribe(events.Ref, typeof(DeviceSocketAppeared));
        var backends = new BackendFactory();
        VhostUserDeviceOptions options = backends.Options() with
        {
            ReconnectMinBackoff = TimeSpan.FromSeconds(2),
            ReconnectMaxBackoff = TimeSpan.FromSeconds(60),
        };
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, options);
        ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync();
        using VhostUserDevice device = await connect;

        // The back-end dies; the first attempt (after the 2 s backoff) is held in connect and
        // will be refused, as a connect to a stale socket file is.
        backends.Refuse = true;
        TaskCompletionSource held = backends.HoldNext();
        first.Dispose();
        DeviceConnectionLost lost = await events.ExpectMsgAsync<DeviceConnectionLost>(TimeSpan.FromSeconds(10));
        Assert.That(lost.Delay, Is.GreaterThanOrEqualTo(TimeSpan.FromSeconds(2)));
        await AwaitConditionAsync(async () =>
            (await device.Supervisor.Ask<SupervisorState>(GetSupervisorState.Instance, RemainingOrDefault)).Phase == SupervisorPhase.Connecting,
            TimeSpan.FromSeconds(10));

        // The socket appears (what the watch reports) while that attempt is under way.
        device.Supervisor.Tell(VhostUserDeviceSupervisor.SocketAppeared.Instance);
        await events.ExpectMsgAsync<DeviceSocketAppeared>(TimeSpan.FromSeconds(10));
        held.SetResult();

        DeviceConnectionLost refused = await events.ExpectMsgAsync<DeviceConnectionLost>(TimeSpan.FromSeconds(10));
        Assert.That(refused.Attempt, Is.EqualTo(2));
        Assert.That(refused.Delay, Is.LessThanOrEqualTo(VhostUserDeviceSupervisor.SocketSettleDelay), "the attempt after the socket appeared waited for the backoff");

        backends.Refuse = false;
        using ScriptedBackend second = await backends.NextAsync();
        await second.ServeHandshakeAsync();
        await AwaitConditionAsync(async () =>
            (await device.Supervisor.Ask<ConnectionCount>(GetConnectionCount.Instance, RemainingOrDefault)).Ready == 2);
    }

    [Test]
    public void Backoff_must_stay_within_its_jitter_bounds_for_any_seed()
    {
        TimeSpan min = TimeSpan.FromMilliseconds(100), max = TimeSpan.FromSeconds(5);
        for (int seed = 0; seed < 50; seed++)
        {
            var random = new Random(seed);
            for (int attempt = 0; attempt < 12; attempt++)
            {
                double nominal = Math.Min(5000, 100 * Math.Pow(2, attempt));
                Assert.That(VhostUserDeviceSupervisor.Backoff(attempt, min, max, random).TotalMilliseconds, Is.InRange(nominal, nominal * 1.2));
            }
        }
    }

    [Test]
    public async Task Device_must_serve_guest_commands_from_the_snapshot_while_disconnected_and_replay_them()
    {
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options() with
        {
            ReconnectMinBackoff = TimeSpan.FromMilliseconds(200),
            ReconnectMaxBackoff = TimeSpan.FromMilliseconds(200),
        });
        ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        using VhostUserDevice device = await connect;
        var lost = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        device.ConnectionLost += r => lost.TrySetResult(r);
        using var rig = new TestRing(FunctionBackedInterruptLine.ToController(0, CreateTestProbe().Ref));

        backends.Refuse = true;
        first.Dispose();
        await lost.Task.WaitAsync(TimeSpan.FromSeconds(10));

        // No back-end: every guest command is answered without one.
        await Task.Run(() =>
        {
            var config = new byte[8];
            device.ReadConfig(0, config);
            Assert.That(config, Is.EqualTo(s_config[..8]));
            device.WriteConfig(0, [0x55]);
            device.ReadConfig(0, config);
            Assert.That(config[0], Is.EqualTo(0x55), "a write while disconnected is visible at once");
            device.StartQueue(0, rig.Resources, ScriptedBackend.DefaultFeatures);
            rig.Kick.Signal();
        }).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.That(device.IsConnected, Is.False);

        backends.Refuse = false;
        using ScriptedBackend second = await backends.NextAsync();
        await second.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);

        // The queue started while disconnected has no inflight region yet: GET first, then the
        // rest, the guest's config write before the ring is enabled.
        await ServeInflightAsync(second);
        foreach (VhostUserRequest r in ScriptedBackend.RingStart.SkipLast(1))
        {
            await second.ExpectAndDropAsync(r);
        }

        using (VhostUserMessage m = await second.ExpectAsync(VhostUserRequest.SET_CONFIG))
        {
            VhostUserConfigMessage parsed = VhostUserConfig.Parse(m.Payload.Span);
            Assert.That((parsed.Header.Offset, parsed.Data.ToArray()), Is.EqualTo((0u, new byte[] { 0x55 })), "the written byte only, not the image");
        }

        await second.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ENABLE);
        await AwaitConditionAsync(() => device.IsConnected);

        // The guest's kick of the disconnected time is still in the eventfd the back-end got.
        Assert.That(rig.Kick.TryConsume(out ulong kicks), Is.True);
        Assert.That(kicks, Is.GreaterThanOrEqualTo(1UL));
    }

    [Test]
    public async Task Device_must_answer_a_queue_stop_whose_backend_dies_under_it_from_guest_memory()
    {
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options());
        ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        using VhostUserDevice device = await connect;
        using var rig = new TestRing(FunctionBackedInterruptLine.ToController(0, CreateTestProbe().Ref));
        Task start = Task.Run(() => device.StartQueue(0, rig.Resources, ScriptedBackend.DefaultFeatures));
        await ServeInflightAsync(first);
        foreach (VhostUserRequest r in ScriptedBackend.RingStart)
        {
            await first.ExpectAndDropAsync(r);
        }

        await start;
        var lost = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var restored = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        device.ConnectionLost += r => lost.TrySetResult(r);
        device.ConnectionRestored += a => restored.TrySetResult(a);
        rig.SetUsedIndex(7);
        Task<VirtqueueState?> stop = Task.Run(() => device.StopQueue(0));
        await first.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ENABLE);
        using (VhostUserMessage m = await first.ExpectAsync(VhostUserRequest.GET_VRING_BASE, ack: null))
        {
            first.Dispose();
        }

        Assert.That(await stop.WaitAsync(TimeSpan.FromSeconds(10)), Is.EqualTo(new VirtqueueState(7, 7)));

        // The connection died with the stop in hand: still the loss of a ready connection.
        Assert.That(await lost.Task.WaitAsync(TimeSpan.FromSeconds(10)), Is.Not.Empty);
        Assert.That(device.IsConnected, Is.False);

        // The next back-end gets the inflight region (the device keeps it) and no ring.
        using ScriptedBackend second = await backends.NextAsync();
        await second.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        await second.ExpectAndDropAsync(VhostUserRequest.SET_INFLIGHT_FD);
        await second.ExpectAndDropAsync(VhostUserRequest.SET_FEATURES);
        await second.ExpectAndDropAsync(VhostUserRequest.SET_MEM_TABLE);
        Assert.That(await restored.Task.WaitAsync(TimeSpan.FromSeconds(10)), Is.EqualTo(1));
        Assert.That(device.IsConnected, Is.True);
        DeviceSnapshot snapshot = await device.Supervisor.Ask<DeviceSnapshot>(GetDeviceSnapshot.Instance);
        Assert.That(snapshot.Queues, Is.Empty);
    }

    [TestCase(VhostUserRequest.GET_FEATURES, TestName = "Device_must_reconnect_when_a_backend_dies_during_the_handshake")]
    [TestCase(VhostUserRequest.SET_MEM_TABLE, TestName = "Device_must_reconnect_when_a_backend_dies_on_SET_MEM_TABLE_of_the_replay")]
    [TestCase(VhostUserRequest.SET_VRING_KICK, TestName = "Device_must_reconnect_when_a_backend_dies_while_the_rings_are_replayed")]
    public async Task Device_must_reconnect_when_a_backend_dies_during_a_reconnect(VhostUserRequest dieOn)
    {
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options());
        ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        using VhostUserDevice device = await connect;
        using var rig = new TestRing(FunctionBackedInterruptLine.ToController(0, CreateTestProbe().Ref));
        Task start = Task.Run(() => device.StartQueue(0, rig.Resources, ScriptedBackend.DefaultFeatures));
        await ServeInflightAsync(first);
        foreach (VhostUserRequest r in ScriptedBackend.RingStart)
        {
            await first.ExpectAndDropAsync(r);
        }

        await start;
        first.Dispose();

        // The second back-end dies on receiving dieOn.
        ScriptedBackend second = await backends.NextAsync();
        while (true)
        {
            using VhostUserMessage m = await second.ReceiveAsync();
            if ((VhostUserRequest)m.Header.Request == dieOn)
            {
                second.Dispose();
                break;
            }

            if ((VhostUserRequest)m.Header.Request is VhostUserRequest.GET_FEATURES)
            {
                await second.ReplyU64Async((VhostUserRequest)m.Header.Request, ScriptedBackend.DefaultFeatures);
            }
            else if ((VhostUserRequest)m.Header.Request is VhostUserRequest.GET_PROTOCOL_FEATURES)
            {
                await second.ReplyU64Async((VhostUserRequest)m.Header.Request, (ulong)Offered);
            }
            else if ((VhostUserRequest)m.Header.Request is VhostUserRequest.GET_CONFIG)
            {
                VhostUserConfigMessage parsed = VhostUserConfig.Parse(m.Payload.Span);
                var reply = new byte[VhostUserConfig.HeaderSize + (int)parsed.Header.Size];
                VhostUserConfig.WritePayload(reply, parsed.Header.Offset, parsed.Header.Flags, s_config.AsSpan(0, (int)parsed.Header.Size));
                await second.ReplyAsync((VhostUserRequest)m.Header.Request, reply);
            }
            else if (VhostUserCodec.NeedsReply(m.Header))
            {
                await second.ReplyU64Async((VhostUserRequest)m.Header.Request, 0);
            }
        }

        // The third gets the whole replay, as if nothing had happened in between.
        using ScriptedBackend third = await backends.NextAsync();
        await third.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        await third.ExpectAndDropAsync(VhostUserRequest.SET_INFLIGHT_FD);
        foreach (VhostUserRequest r in ScriptedBackend.RingStart)
        {
            await third.ExpectAndDropAsync(r);
        }

        await AwaitConditionAsync(async () =>
            (await device.Supervisor.Ask<ConnectionCount>(GetConnectionCount.Instance, RemainingOrDefault)).Ready == 2);
    }

    [Test]
    public async Task Device_must_fault_when_reconnect_max_is_exhausted_and_connect_again_on_the_guests_reset()
    {
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options() with { ReconnectMax = 3 });
        ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        using VhostUserDevice device = await connect;
        var faulted = new TaskCompletionSource<DeviceFault>(TaskCreationOptions.RunContinuationsAsynchronously);
        device.Faulted += f => faulted.TrySetResult(f);

        backends.Refuse = true;
        first.Dispose();
        DeviceFault fault = await faulted.Task.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.That(fault.Reason, Does.Contain("3 reconnect attempt(s) failed"));
        Assert.That(backends.Connects, Is.EqualTo(4));

        // Given up: commands are still answered (no hang), no connection is attempted.
        await Task.Run(() => device.StopQueue(0)).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.That(backends.Connects, Is.EqualTo(4));

        backends.Refuse = false;
        await Task.Run(device.Reset).WaitAsync(TimeSpan.FromSeconds(10));
        using ScriptedBackend second = await backends.NextAsync();
        await second.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        await AwaitConditionAsync(() => device.IsConnected);
    }

    [Test]
    public async Task Device_must_give_up_rather_than_resume_a_packed_ring_whose_backend_died()
    {
        const ulong packed = ScriptedBackend.DefaultFeatures | (1UL << 34);
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options());
        ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync(features: packed, protocolFeatures: Offered & ~VhostUserProtocolFeatures.INFLIGHT_SHMFD, config: s_config);
        using VhostUserDevice device = await connect;
        var faulted = new TaskCompletionSource<DeviceFault>(TaskCreationOptions.RunContinuationsAsynchronously);
        device.Faulted += f => faulted.TrySetResult(f);
        using var rig = new TestRing(FunctionBackedInterruptLine.ToController(0, CreateTestProbe().Ref));
        Task start = Task.Run(() => device.StartQueue(0, rig.Resources, packed));
        foreach (VhostUserRequest r in ScriptedBackend.RingStart)
        {
            await first.ExpectAndDropAsync(r);
        }

        await start;
        first.Dispose();
        DeviceFault fault = await faulted.Task.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.That(fault.Reason, Does.Contain("packed ring"));
        Assert.That(backends.Connects, Is.EqualTo(1));

        // The guest's reset brings fresh rings: a new connection, nothing to resume.
        await Task.Run(device.Reset).WaitAsync(TimeSpan.FromSeconds(10));
        using ScriptedBackend second = await backends.NextAsync();
        await second.ServeHandshakeAsync(features: packed, protocolFeatures: Offered, config: s_config);
        await AwaitConditionAsync(() => device.IsConnected);
    }

    #region Infrastructure

    /// <summary>Answers GET_INFLIGHT_FD with a fresh region, then takes SET_INFLIGHT_FD.</summary>
    private static async Task ServeInflightAsync(ScriptedBackend backend)
    {
        using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.GET_INFLIGHT_FD))
        {
            using SafeFileDescriptor region = ScriptedBackend.NewFd();
            var reply = new byte[VhostUserInflight.Size];
            new VhostUserInflight(4096, 0, 1, 256).Write(reply);
            await backend.ReplyAsync(VhostUserRequest.GET_INFLIGHT_FD, reply, [region]);
        }

        await backend.ExpectAndDropAsync(VhostUserRequest.SET_INFLIGHT_FD);
    }


    #endregion
}
