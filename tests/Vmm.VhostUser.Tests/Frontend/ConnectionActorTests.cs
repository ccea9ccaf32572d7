using Akka.Actor;
using Akka.TestKit;
using NUnit.Framework;
using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;
using Vmm.TestKit;

namespace Vmm.VhostUser.Tests.Frontend;

/// <summary>
/// <see cref="VhostUserConnectionActor"/> alone, under a TestProbe parent that stands in for the
/// supervisor (it receives ConnectionReady and CommandRequeued, and its strategy records how the
/// connection failed): every phase and transition, the stash order, and how each kind of failure
/// ends the connection.
/// </summary>
[TestFixture]
public sealed class ConnectionActorTests : AkkaTest
{
    private const VhostUserProtocolFeatures Offered =
        VhostUserProtocolFeatures.MQ | VhostUserProtocolFeatures.REPLY_ACK | VhostUserProtocolFeatures.CONFIG;

    private static readonly byte[] s_config = [.. Enumerable.Range(1, 60).Select(i => (byte)i)];

    private readonly EventNotifierLoop _loop = new("connection-tests");

    [TearDown]
    public void StopLoop() => _loop.Dispose();

    [Test]
    public async Task Connection_must_go_from_Connecting_to_Negotiating_to_Ready_and_tell_its_parent()
    {
        var backends = new BackendFactory();
        TaskCompletionSource held = backends.HoldNext();
        ConnectionHarness h = Start(backends);
        Assert.That(await PhaseAsync(h.Connection), Is.EqualTo(ConnectionPhase.Connecting));

        held.SetResult();
        using ScriptedBackend backend = await backends.NextAsync();
        await backend.ExpectAndDropAsync(VhostUserRequest.GET_FEATURES, ack: null);
        Assert.That(await PhaseAsync(h.Connection), Is.EqualTo(ConnectionPhase.Negotiating), "the handshake waits for GET_FEATURES' answer");

        await backend.ReplyU64Async(VhostUserRequest.GET_FEATURES, ScriptedBackend.DefaultFeatures);
        await ServeRestOfHandshakeAsync(backend);
        ConnectionReady ready = await h.Parent.ExpectMsgAsync<ConnectionReady>();
        Assert.That(ready.Info.QueueCount, Is.EqualTo(1));
        Assert.That(ready.Info.Config, Is.EqualTo(s_config));
        Assert.That(await PhaseAsync(h.Connection), Is.EqualTo(ConnectionPhase.Ready));
    }

    [Test]
    public async Task Connection_must_keep_commands_until_Ready_and_run_them_in_arrival_order()
    {
        var backends = new BackendFactory();
        ConnectionHarness h = Start(backends);
        using ScriptedBackend backend = await backends.NextAsync();
        TestProbe[] askers = [CreateTestProbe(), CreateTestProbe(), CreateTestProbe()];
        for (int i = 0; i < askers.Length; i++)
        {
            h.Connection.Tell(new WriteConfig(8, [(byte)(0xA0 + i)]), askers[i].Ref);
        }

        await backend.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        await h.Parent.ExpectMsgAsync<ConnectionReady>();
        for (int i = 0; i < askers.Length; i++)
        {
            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_CONFIG))
            {
                Assert.That(m.Payload.Span[VhostUserConfig.HeaderSize], Is.EqualTo(0xA0 + i), $"write {i} in its place");
            }

            await askers[i].ExpectMsgAsync<ConfigWritten>();
        }

        Assert.That(h.Model.Snapshot.Config.Written.Single().Data, Is.EqualTo(new byte[] { 0xA2 }), "one written range, the last value");
    }

    [Test]
    public async Task Connection_must_replay_the_snapshot_in_Replaying_before_it_is_Ready()
    {
        var backends = new BackendFactory();
        using var rig = new TestRing();
        VhostUserDeviceModel model = ModelWithRunningQueue(backends, rig, usedIndex: 9);
        ConnectionHarness h = Start(backends, model);
        using ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_FEATURES);
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_MEM_TABLE);
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_NUM);
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ADDR);
        using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_VRING_BASE, ack: null))
        {
            Assert.That(VhostUserVringState.Read(m.Payload.Span).Num, Is.EqualTo(9u), "from the used index in guest memory");
            Assert.That(await PhaseAsync(h.Connection), Is.EqualTo(ConnectionPhase.Replaying));
            h.Connection.Tell(new ReadConfig(0, 4), TestActor);
            await backend.ReplyU64Async(VhostUserRequest.SET_VRING_BASE, 0);
        }

        await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_CALL);
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_KICK);
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ENABLE);
        await h.Parent.ExpectMsgAsync<ConnectionReady>();
        Assert.That((await ExpectMsgAsync<ConfigData>()).Data, Is.EqualTo(s_config[..4]), "the read waited for the replay");
        Assert.That(rig.Kick.TryConsume(), Is.True, "the kick is signalled once after the replay");
    }

    [Test]
    public async Task Connection_must_be_Busy_while_a_command_is_on_the_wire_and_keep_later_ones_in_order()
    {
        var backends = new BackendFactory();
        using var rig = new TestRing();
        (ConnectionHarness h, ScriptedBackend backend) = await StartWithQueueAsync(backends, rig);
        using (backend)
        {
            h.Connection.Tell(new StopQueue(0), TestActor);
            await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ENABLE);
            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.GET_VRING_BASE, ack: null))
            {
                Assert.That(await PhaseAsync(h.Connection), Is.EqualTo(ConnectionPhase.Busy));
                h.Connection.Tell(new WriteConfig(0, [1]), TestActor);
                await ReplyVringBaseAsync(backend, 0, 3);
            }

            Assert.That((await ExpectMsgAsync<QueueStopped>()).State, Is.EqualTo(new VirtqueueState(3, 0)));
            await backend.ExpectAndDropAsync(VhostUserRequest.SET_CONFIG);
            await ExpectMsgAsync<ConfigWritten>();
            Assert.That(await PhaseAsync(h.Connection), Is.EqualTo(ConnectionPhase.Ready));
        }
    }

    [Test]
    public async Task Connection_must_answer_a_message_it_does_not_handle_in_every_phase()
    {
        var backends = new BackendFactory();
        TaskCompletionSource held = backends.HoldNext();
        using var rig = new TestRing();
        ConnectionHarness h = Start(backends, ModelWithRunningQueue(backends, rig, usedIndex: 0));
        await ExpectUnsupportedAsync(h.Connection, ConnectionPhase.Connecting);
        held.SetResult();
        using ScriptedBackend backend = await backends.NextAsync();
        await backend.ExpectAndDropAsync(VhostUserRequest.GET_FEATURES, ack: null);
        await ExpectUnsupportedAsync(h.Connection, ConnectionPhase.Negotiating);
        await backend.ReplyU64Async(VhostUserRequest.GET_FEATURES, ScriptedBackend.DefaultFeatures);
        await ServeRestOfHandshakeAsync(backend);
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_FEATURES, ack: null);
        await ExpectUnsupportedAsync(h.Connection, ConnectionPhase.Replaying);
        await backend.ReplyU64Async(VhostUserRequest.SET_FEATURES, 0);
        foreach (VhostUserRequest r in ScriptedBackend.RingStart.Skip(1))
        {
            await backend.ExpectAndDropAsync(r);
        }

        await h.Parent.ExpectMsgAsync<ConnectionReady>();
        await ExpectUnsupportedAsync(h.Connection, ConnectionPhase.Ready);
        h.Connection.Tell(new StopQueue(0), TestActor);
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ENABLE);
        using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.GET_VRING_BASE, ack: null))
        {
            await ExpectUnsupportedAsync(h.Connection, ConnectionPhase.Busy);
            await ReplyVringBaseAsync(backend, 0, 0);
        }

        await ExpectMsgAsync<QueueStopped>();
    }

    [Test]
    public async Task Connection_must_hand_back_the_command_in_flight_then_the_waiting_ones_in_order_when_the_backend_dies()
    {
        var backends = new BackendFactory();
        using var rig = new TestRing();
        (ConnectionHarness h, ScriptedBackend backend) = await StartWithQueueAsync(backends, rig);
        TestProbe first = CreateTestProbe();
        TestProbe second = CreateTestProbe();
        TestProbe third = CreateTestProbe();
        h.Connection.Tell(new StopQueue(0), first.Ref);
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ENABLE);
        using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.GET_VRING_BASE, ack: null))
        {
            h.Connection.Tell(new WriteConfig(0, [7]), second.Ref);
            h.Connection.Tell(new ReadConfig(0, 2), third.Ref);
            Assert.That(await PhaseAsync(h.Connection), Is.EqualTo(ConnectionPhase.Busy), "both wait behind the stop");
            backend.Dispose();
        }

        // The parent gets each back with its own asker, in order; nobody was answered.
        CommandRequeued a = await h.Parent.ExpectMsgAsync<CommandRequeued>();
        Assert.That((a.Command, h.Parent.LastSender), Is.EqualTo(((IDeviceCommand)new StopQueue(0), first.Ref)));
        CommandRequeued b = await h.Parent.ExpectMsgAsync<CommandRequeued>();
        Assert.That((b.Command is WriteConfig { Offset: 0 }, h.Parent.LastSender), Is.EqualTo((true, second.Ref)));
        CommandRequeued c = await h.Parent.ExpectMsgAsync<CommandRequeued>();
        Assert.That((c.Command, h.Parent.LastSender), Is.EqualTo(((IDeviceCommand)new ReadConfig(0, 2), third.Ref)));
        Assert.That(await h.Failure.Task.WaitAsync(RemainingOrDefault), Is.InstanceOf<VhostUserConnectionLostException>());
        await first.ExpectNoMsgAsync(TimeSpan.FromMilliseconds(100));
    }

    [Test]
    public async Task Connection_must_fail_its_askers_and_stop_on_a_protocol_violation()
    {
        var backends = new BackendFactory();
        using var rig = new TestRing();
        (ConnectionHarness h, ScriptedBackend backend) = await StartWithQueueAsync(backends, rig);
        using (backend)
        {
            h.Connection.Tell(new StopQueue(0), TestActor);
            TestProbe waiting = CreateTestProbe();
            await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ENABLE);
            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.GET_VRING_BASE, ack: null))
            {
                h.Connection.Tell(new WriteConfig(0, [7]), waiting.Ref);
                await PhaseAsync(h.Connection);
                await backend.ReplyRawAsync((uint)VhostUserRequest.GET_VRING_BASE, 0x1, new byte[VhostUserVringState.Size]);
            }

            Assert.That((await ExpectMsgAsync<Status.Failure>()).Cause, Is.InstanceOf<VhostUserProtocolException>());
            Assert.That((await waiting.ExpectMsgAsync<Status.Failure>()).Cause, Is.InstanceOf<VhostUserProtocolException>());
            Assert.That(await h.Failure.Task.WaitAsync(RemainingOrDefault), Is.InstanceOf<VhostUserProtocolException>());
            await h.Parent.ExpectNoMsgAsync(TimeSpan.FromMilliseconds(100));
        }
    }

    [Test]
    public async Task Connection_must_fail_only_the_asker_of_a_refused_request_and_stay_Ready()
    {
        var backends = new BackendFactory();
        ConnectionHarness h = Start(backends);
        using ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        await h.Parent.ExpectMsgAsync<ConnectionReady>();
        h.Connection.Tell(new WriteConfig(0, [1]), TestActor);
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_CONFIG, ack: 1);
        Status.Failure refused = await ExpectMsgAsync<Status.Failure>();
        Assert.That(refused.Cause, Is.InstanceOf<VhostUserRequestFailedException>());
        Assert.That(await PhaseAsync(h.Connection), Is.EqualTo(ConnectionPhase.Ready));
        Assert.That(h.Model.Snapshot.Config.Written, Is.Empty, "a refused write is not kept for the next back-end");
        Assert.That(h.Failure.Task.IsCompleted, Is.False);
    }

    [Test]
    public async Task Connection_must_refuse_a_backend_that_no_longer_offers_a_negotiated_feature()
    {
        var backends = new BackendFactory();
        using var rig = new TestRing();
        VhostUserDeviceModel model = ModelWithRunningQueue(backends, rig, usedIndex: 0);
        ConnectionHarness h = Start(backends, model);
        using ScriptedBackend backend = await backends.NextAsync();
        h.Connection.Tell(new ReadConfig(0, 4), TestActor);

        // The guest negotiated EVENT_IDX (bit 29); the new back-end does not offer it.
        await backend.ServeHandshakeAsync(ScriptedBackend.DefaultFeatures & ~(1UL << 29), Offered, config: s_config);
        Exception failure = await h.Failure.Task.WaitAsync(RemainingOrDefault);
        Assert.That(failure, Is.InstanceOf<VhostUserIncompatibleBackendException>());
        Assert.That(failure.Message, Does.Contain("EVENT_IDX").And.Contain("no longer offers"));
        Assert.That((await ExpectMsgAsync<Status.Failure>()).Cause, Is.SameAs(failure), "the waiting command hears why");
        await h.Parent.ExpectNoMsgAsync(TimeSpan.FromMilliseconds(100));
        Assert.That(backend.Log, Does.Not.Contain(VhostUserRequest.SET_FEATURES), "nothing replayed to it");
    }

    [Test]
    public async Task Connection_must_refuse_a_backend_without_INFLIGHT_SHMFD_when_the_snapshot_holds_an_inflight_region()
    {
        var backends = new BackendFactory();
        using var rig = new TestRing();
        VhostUserDeviceModel model = ModelWithRunningQueue(backends, rig, usedIndex: 0);
        model.RestoreInflight(new RestoreInflight(new byte[4096], 1, 64));
        ConnectionHarness h = Start(backends, model);
        using ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        Exception failure = await h.Failure.Task.WaitAsync(RemainingOrDefault);
        Assert.That(failure, Is.InstanceOf<VhostUserIncompatibleBackendException>());
        Assert.That(failure.Message, Does.Contain("INFLIGHT_SHMFD"));
    }

    [Test]
    public async Task Connection_must_notice_a_backend_that_hangs_up_while_idle()
    {
        var backends = new BackendFactory();
        ConnectionHarness h = Start(backends);
        ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        await h.Parent.ExpectMsgAsync<ConnectionReady>();
        backend.Dispose();
        Assert.That(await h.Failure.Task.WaitAsync(RemainingOrDefault), Is.InstanceOf<VhostUserConnectionLostException>());
    }

    [Test]
    public async Task Connection_must_fail_when_the_socket_cannot_be_opened()
    {
        var backends = new BackendFactory { Refuse = true };
        TaskCompletionSource held = backends.HoldNext();
        ConnectionHarness h = Start(backends);
        h.Connection.Tell(GetDeviceInfo.Instance, TestActor);
        Assert.That(await PhaseAsync(h.Connection), Is.EqualTo(ConnectionPhase.Connecting));
        held.SetResult();
        Exception failure = await h.Failure.Task.WaitAsync(RemainingOrDefault);
        Assert.That(VhostUserDeviceSupervisor.IsTransportLost(failure), Is.True, failure.ToString());
        await h.Parent.ExpectMsgAsync<CommandRequeued>(m => Assert.That(m.Command, Is.SameAs(GetDeviceInfo.Instance)));
    }

    #region Infrastructure

    private ConnectionHarness Start(BackendFactory backends, VhostUserDeviceModel? model = null) =>
        ConnectionHarness.Start(CreateTestProbe(), _loop, backends.Options(), model);

    /// <summary>A model as a supervisor holds it after queue 0 was started while disconnected: something to replay.</summary>
    private static VhostUserDeviceModel ModelWithRunningQueue(BackendFactory backends, TestRing rig, ushort usedIndex)
    {
        var model = new VhostUserDeviceModel(backends.Options());
        model.Connected(new VhostUserBackendInfo(ScriptedBackend.DefaultFeatures, Offered, Offered, 1, null, s_config));
        rig.SetUsedIndex(usedIndex);
        Assert.That(model.ServeOffline(new StartQueue(0, rig.Resources, ScriptedBackend.DefaultFeatures)), Is.InstanceOf<QueueStarted>());
        return model;
    }

    private async Task<(ConnectionHarness, ScriptedBackend)> StartWithQueueAsync(BackendFactory backends, TestRing rig)
    {
        ConnectionHarness h = Start(backends);
        ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        await h.Parent.ExpectMsgAsync<ConnectionReady>();
        h.Connection.Tell(new StartQueue(0, rig.Resources, ScriptedBackend.DefaultFeatures), TestActor);
        foreach (VhostUserRequest r in ScriptedBackend.RingStart)
        {
            await backend.ExpectAndDropAsync(r);
        }

        await ExpectMsgAsync<QueueStarted>();
        return (h, backend);
    }

    private async Task<ConnectionPhase> PhaseAsync(IActorRef connection) =>
        (await connection.Ask<ConnectionPhaseReply>(GetConnectionPhase.Instance, RemainingOrDefault)).Phase;

    private async Task ExpectUnsupportedAsync(IActorRef connection, ConnectionPhase phase)
    {
        Assert.That(await PhaseAsync(connection), Is.EqualTo(phase));
        connection.Tell("not a command", TestActor);
        Status.Failure failure = await ExpectMsgAsync<Status.Failure>();
        Assert.That(failure.Cause, Is.InstanceOf<NotSupportedException>(), $"in {phase}");
    }

    /// <summary>The handshake after GET_FEATURES (answered by the test), with <see cref="Offered"/> and the config.</summary>
    private static async Task ServeRestOfHandshakeAsync(ScriptedBackend backend)
    {
        await backend.ExpectGetU64Async(VhostUserRequest.GET_PROTOCOL_FEATURES, (ulong)Offered);
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_PROTOCOL_FEATURES);
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_OWNER);
        await backend.ExpectGetU64Async(VhostUserRequest.GET_QUEUE_NUM, 1);
        using VhostUserMessage get = await backend.ExpectAsync(VhostUserRequest.GET_CONFIG);
        VhostUserConfigMessage parsed = VhostUserConfig.Parse(get.Payload.Span);
        var reply = new byte[VhostUserConfig.HeaderSize + (int)parsed.Header.Size];
        VhostUserConfig.WritePayload(reply, parsed.Header.Offset, parsed.Header.Flags, s_config.AsSpan(0, (int)parsed.Header.Size));
        await backend.ReplyAsync(VhostUserRequest.GET_CONFIG, reply);
    }

    private static async Task ReplyVringBaseAsync(ScriptedBackend backend, uint index, uint num)
    {
        var reply = new byte[VhostUserVringState.Size];
        new VhostUserVringState(index, num).Write(reply);
        await backend.ReplyAsync(VhostUserRequest.GET_VRING_BASE, reply);
    }


    #endregion
}
