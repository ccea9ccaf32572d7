using Akka.Actor;
using Akka.TestKit;
using NUnit.Framework;
using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Machine;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;
using Vmm.TestKit;

namespace Vmm.VhostUser.Tests.Frontend;

/// <summary>
/// <see cref="VhostUserDeviceSupervisor"/> under a TestProbe parent that plays the VM: each phase
/// (<see cref="SupervisorPhase"/>) and transition, what the VM is told and asked, and what the
/// host hears through <see cref="VhostUserDeviceEvents"/>.
/// </summary>
[TestFixture]
public sealed class SupervisorStateTests : AkkaTest
{
    private const VhostUserProtocolFeatures Offered = VhostUserProtocolFeatures.REPLY_ACK | VhostUserProtocolFeatures.CONFIG;

    private static readonly byte[] s_config = [.. Enumerable.Range(1, 60).Select(i => (byte)i)];

    [Test]
    public async Task Supervisor_must_be_Starting_until_the_first_connection_is_ready_then_Ready()
    {
        var backends = new BackendFactory();
        Harness h = Start(backends.Options());
        ScriptedBackend backend = await backends.NextAsync();
        Assert.That((await StateAsync(h)).Phase, Is.EqualTo(SupervisorPhase.Starting));
        h.Supervisor.Tell(new ReadConfig(0, 4), TestActor);
        await backend.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        Assert.That((await ExpectMsgAsync<ConfigData>()).Data, Is.EqualTo(s_config[..4]), "kept until ready, then answered");
        Assert.That((await h.FirstReady.Task.WaitAsync(RemainingOrDefault)).Config, Is.EqualTo(s_config));
        Assert.That((await StateAsync(h)).Phase, Is.EqualTo(SupervisorPhase.Ready));
        backend.Dispose();
    }

    [Test]
    public async Task Supervisor_must_stop_and_tell_its_parent_when_the_first_attempt_fails()
    {
        var backends = new BackendFactory();
        TaskCompletionSource held = backends.HoldNext();
        backends.Refuse = true;
        Harness h = Start(backends.Options());
        Watch(h.Supervisor);
        h.Supervisor.Tell(GetDeviceInfo.Instance, TestActor);
        held.SetResult();

        DeviceFailed failed = await h.Parent.ExpectMsgAsync<DeviceFailed>();
        Assert.That(failed.Reason, Does.Contain("refused"));
        Assert.That((await ExpectMsgAsync<Status.Failure>()).Cause, Is.InstanceOf<IOException>(), "the waiting command hears why");
        await ExpectTerminatedAsync(h.Supervisor);
        Assert.That(h.FirstReady.Task.IsFaulted, Is.True);
    }

    [Test]
    public async Task Supervisor_must_wait_for_a_backend_that_is_not_up_yet_when_asked_to()
    {
        var backends = new BackendFactory { Refuse = true };
        Harness h = Start(backends.Options() with { WaitForBackend = true });
        h.Supervisor.Tell(GetDeviceInfo.Instance, TestActor);
        await AwaitConditionAsync(() => backends.Connects >= 3);
        SupervisorState waiting = await StateAsync(h);
        Assert.That(waiting.Phase, Is.EqualTo(SupervisorPhase.Starting), "still starting: no failure, no stop");
        Assert.That(waiting.Reason, Does.Contain("refused"));
        await ExpectNoMsgAsync(TimeSpan.FromMilliseconds(50));
        await h.Parent.ExpectNoMsgAsync(TimeSpan.FromMilliseconds(50));

        backends.Refuse = false;
        using ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        Assert.That((await ExpectMsgAsync<DeviceInfo>()).Config, Is.EqualTo(s_config));
        Assert.That((await StateAsync(h)).Phase, Is.EqualTo(SupervisorPhase.Ready));
    }

    [Test]
    public async Task Supervisor_must_back_off_then_connect_again_after_a_loss_and_raise_lost_and_restored()
    {
        var backends = new BackendFactory();
        Harness h = Start(backends.Options() with { ReconnectMinBackoff = TimeSpan.FromSeconds(30), ReconnectMaxBackoff = TimeSpan.FromSeconds(30) });
        ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        await h.FirstReady.Task.WaitAsync(RemainingOrDefault);

        first.Dispose();
        Assert.That(await h.Lost.Task.WaitAsync(RemainingOrDefault), Is.Not.Empty);
        await AwaitConditionAsync(async () => (await StateAsync(h)).Phase == SupervisorPhase.BackingOff);
        Assert.That((await StateAsync(h)).Attempt, Is.EqualTo(1));

        // The backoff is long: ReconnectNow (a host saw the socket come back) starts the attempt at once.
        Assert.That(await h.Supervisor.Ask<ReconnectScheduled>(ReconnectNow.Instance, RemainingOrDefault), Is.EqualTo(new ReconnectScheduled(true)));
        using ScriptedBackend second = await backends.NextAsync();
        Assert.That((await StateAsync(h)).Phase, Is.EqualTo(SupervisorPhase.Connecting));
        await second.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        Assert.That(await h.Restored.Task.WaitAsync(RemainingOrDefault), Is.EqualTo(1));
        Assert.That((await StateAsync(h)).Phase, Is.EqualTo(SupervisorPhase.Ready));
        Assert.That(await h.Supervisor.Ask<ReconnectScheduled>(ReconnectNow.Instance, RemainingOrDefault), Is.EqualTo(new ReconnectScheduled(false)));
        await h.Parent.ExpectNoMsgAsync(TimeSpan.FromMilliseconds(50));
    }

    [TestCase(false, TestName = "Supervisor_must_treat_a_backend_dying_mid_command_as_a_loss_and_resume_a_split_ring")]
    [TestCase(true, TestName = "Supervisor_must_give_up_when_a_backend_dies_mid_command_while_a_packed_ring_runs")]
    public async Task Supervisor_must_treat_a_backend_dying_mid_command_as_the_loss_of_a_ready_connection(bool packed)
    {
        ulong features = ScriptedBackend.DefaultFeatures | (packed ? 1UL << 34 : 0);
        var backends = new BackendFactory();
        Harness h = Start(backends.Options());
        using var rig = new TestRing();
        ScriptedBackend first = await StartQueueAsync(h, backends, rig, features);

        // A config write is on the wire when the back-end dies: the command comes back to the
        // supervisor before (or after) the connection's end; either way the ready connection was lost.
        h.Supervisor.Tell(new WriteConfig(0, [9]), TestActor);
        using (VhostUserMessage m = await first.ExpectAsync(VhostUserRequest.SET_CONFIG, ack: null))
        {
            first.Dispose();
        }

        Assert.That(await ExpectMsgAsync<ConfigWritten>(), Is.Not.Null, "served from the model");
        Assert.That(await h.Lost.Task.WaitAsync(RemainingOrDefault), Is.Not.Empty, "ConnectionLost raised");
        if (packed)
        {
            // The packed ring's position died with the back-end: no resume from its start state.
            DeviceFailed failed = await h.Parent.ExpectMsgAsync<DeviceFailed>();
            Assert.That(failed.Reason, Does.Contain("packed ring"));
            Assert.That((await StateAsync(h)).Phase, Is.EqualTo(SupervisorPhase.GaveUp));
            Assert.That(await h.Failed.Task.WaitAsync(RemainingOrDefault), Does.Contain("packed ring"));
            Assert.That(backends.Connects, Is.EqualTo(1), "a device that gave up makes no attempt of its own");
        }
        else
        {
            rig.SetUsedIndex(4);
            using ScriptedBackend second = await backends.NextAsync();
            await second.ServeHandshakeAsync(features, Offered, config: s_config);
            await second.ExpectAndDropAsync(VhostUserRequest.SET_FEATURES);
            await second.ExpectAndDropAsync(VhostUserRequest.SET_MEM_TABLE);
            await second.ExpectAndDropAsync(VhostUserRequest.SET_VRING_NUM);
            await second.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ADDR);
            using (VhostUserMessage m = await second.ExpectAsync(VhostUserRequest.SET_VRING_BASE))
            {
                Assert.That(VhostUserVringState.Read(m.Payload.Span).Num, Is.EqualTo(4u));
            }

            await second.ExpectAndDropAsync(VhostUserRequest.SET_VRING_CALL);
            await second.ExpectAndDropAsync(VhostUserRequest.SET_VRING_KICK);
            await second.ExpectAndDropAsync(VhostUserRequest.SET_CONFIG);
            await second.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ENABLE);
            Assert.That(await h.Restored.Task.WaitAsync(RemainingOrDefault), Is.EqualTo(1));
        }
    }

    [Test]
    public async Task Supervisor_must_give_up_on_a_protocol_violation_and_come_back_after_the_guests_reset()
    {
        var backends = new BackendFactory();
        Harness h = Start(backends.Options());
        ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        await h.FirstReady.Task.WaitAsync(RemainingOrDefault);

        h.Supervisor.Tell(new WriteConfig(0, [1]), TestActor);
        using (VhostUserMessage m = await first.ExpectAsync(VhostUserRequest.SET_CONFIG, ack: null))
        {
            await first.ReplyRawAsync((uint)VhostUserRequest.SET_CONFIG, 0x1, BitConverter.GetBytes(0UL));
        }

        Assert.That((await ExpectMsgAsync<Status.Failure>()).Cause, Is.InstanceOf<VhostUserProtocolException>());
        Assert.That((await h.Parent.ExpectMsgAsync<DeviceFailed>()).Reason, Does.Contain("flags 0x1"));
        Assert.That((await StateAsync(h)).Phase, Is.EqualTo(SupervisorPhase.GaveUp));
        Assert.That(await h.Failed.Task.WaitAsync(RemainingOrDefault), Does.Contain("flags 0x1"));
        Assert.That(await h.Supervisor.Ask<ConfigData>(new ReadConfig(0, 2), RemainingOrDefault), Is.EqualTo(new ConfigData(0, s_config[..2])).Using<ConfigData>(SameData));

        h.Supervisor.Tell(ResetDevice.Instance, TestActor);
        await ExpectMsgAsync<DeviceReset>();
        using ScriptedBackend second = await backends.NextAsync();
        await second.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        Assert.That((await h.Parent.ExpectMsgAsync<DeviceRecovered>()).Name, Is.EqualTo("blk0"));
        Assert.That((await StateAsync(h)).Phase, Is.EqualTo(SupervisorPhase.Ready));
        first.Dispose();
    }

    [TestCase(DeviceFailurePolicy.Reconnect, TestName = "Supervisor_must_ask_its_parent_on_an_unexpected_failure_and_reconnect_when_told_keeping_the_snapshot")]
    [TestCase(DeviceFailurePolicy.GiveUp, TestName = "Supervisor_must_ask_its_parent_on_an_unexpected_failure_and_give_up_when_told_keeping_the_snapshot")]
    public async Task Supervisor_must_ask_its_parent_on_an_unexpected_failure(DeviceFailurePolicy policy)
    {
        var backends = new BackendFactory();
        Harness h = Start(backends.Options());
        using var rig = new TestRing();
        ScriptedBackend first = await StartQueueAsync(h, backends, rig, ScriptedBackend.DefaultFeatures);

        // The back-end goes; the reconnect meets a failure of a kind the device cannot judge.
        backends.FailNextWith(new InvalidCastException("a failure nobody planned for"));
        first.Dispose();
        DeviceEscalated escalated = await h.Parent.ExpectMsgAsync<DeviceEscalated>();
        Assert.That(escalated.Reason, Does.Contain("InvalidCastException").And.Contain("nobody planned for"));
        Assert.That((await StateAsync(h)).Phase, Is.EqualTo(SupervisorPhase.AwaitingDecision));
        Assert.That(await h.Supervisor.Ask<QueueStopped>(new StopQueue(1), RemainingOrDefault), Is.EqualTo(new QueueStopped(1, null)), "served meanwhile");

        h.Parent.Reply(new DeviceDecision("blk0", policy));
        DeviceSnapshot snapshot = await h.Supervisor.Ask<DeviceSnapshot>(GetDeviceSnapshot.Instance, RemainingOrDefault);
        Assert.That(snapshot.Queues.Keys, Is.EqualTo(new[] { 0 }), "the snapshot is kept");
        if (policy == DeviceFailurePolicy.Reconnect)
        {
            using ScriptedBackend second = await backends.NextAsync();
            await second.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
            foreach (VhostUserRequest r in ScriptedBackend.RingStart)
            {
                await second.ExpectAndDropAsync(r);
            }

            Assert.That(await h.Restored.Task.WaitAsync(RemainingOrDefault), Is.GreaterThanOrEqualTo(1));
        }
        else
        {
            Assert.That(await h.Failed.Task.WaitAsync(RemainingOrDefault), Does.Contain("InvalidCastException"));
            Assert.That((await h.Parent.ExpectMsgAsync<DeviceFailed>()).Reason, Does.Contain("InvalidCastException"));
            Assert.That((await StateAsync(h)).Phase, Is.EqualTo(SupervisorPhase.GaveUp));
        }
    }

    [Test]
    public async Task The_VM_decides_an_escalated_device_failure_and_the_device_keeps_its_snapshot()
    {
        IActorRef vm = Sys.ActorOf(VmActor.Props(new VmSettings { UnexpectedDeviceFailure = DeviceFailurePolicy.GiveUp }), "vm");
        var backends = new BackendFactory();
        VhostUserDeviceOptions options = backends.Options();
        TaskCompletionSource<DeviceInfo> firstReady = VhostUserDevice.CreateFirstReady();
        var events = new VhostUserDeviceEvents();
        var failed = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        events.Failed += r => failed.TrySetResult(r);
        DeviceAttached attached = await vm.Ask<DeviceAttached>(
            new AttachDevice("blk0", r => VhostUserDeviceSupervisor.Props(options, firstReady, events, r.Notifiers.Watch)), RemainingOrDefault);
        ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        await firstReady.Task.WaitAsync(RemainingOrDefault);
        using var rig = new TestRing();
        attached.Device.Tell(new StartQueue(0, rig.Resources, ScriptedBackend.DefaultFeatures), TestActor);
        foreach (VhostUserRequest r in ScriptedBackend.RingStart)
        {
            await first.ExpectAndDropAsync(r);
        }

        await ExpectMsgAsync<QueueStarted>();
        backends.FailNextWith(new InvalidCastException("unplanned"));
        first.Dispose();

        Assert.That(await failed.Task.WaitAsync(RemainingOrDefault), Does.Contain("unplanned"), "the VM's decision: it needs a reset");
        DeviceSnapshot snapshot = await attached.Device.Ask<DeviceSnapshot>(GetDeviceSnapshot.Instance, RemainingOrDefault);
        Assert.That(snapshot.Queues.Keys, Is.EqualTo(new[] { 0 }));
        Devices devices = await vm.Ask<Devices>(GetDevices.Instance, RemainingOrDefault);
        Assert.That(devices.Failed.Single().Name, Is.EqualTo("blk0"));
        Assert.That((await attached.Device.Ask<SupervisorState>(GetSupervisorState.Instance, RemainingOrDefault)).Phase, Is.EqualTo(SupervisorPhase.GaveUp));
    }

    [Test]
    public async Task Supervisor_must_give_up_when_the_new_backend_lost_a_negotiated_feature()
    {
        var backends = new BackendFactory();
        Harness h = Start(backends.Options());
        using var rig = new TestRing();
        ScriptedBackend first = await StartQueueAsync(h, backends, rig, ScriptedBackend.DefaultFeatures);
        first.Dispose();
        using ScriptedBackend second = await backends.NextAsync();
        await second.ServeHandshakeAsync(ScriptedBackend.DefaultFeatures & ~(1UL << 28), Offered, config: s_config);

        DeviceFailed failed = await h.Parent.ExpectMsgAsync<DeviceFailed>();
        Assert.That(failed.Reason, Does.Contain("INDIRECT_DESC"));
        Assert.That(failed.Reason.Split('\n'), Has.Length.EqualTo(1), "one line");
        Assert.That((await StateAsync(h)).Phase, Is.EqualTo(SupervisorPhase.GaveUp));
        DeviceSnapshot snapshot = await h.Supervisor.Ask<DeviceSnapshot>(GetDeviceSnapshot.Instance, RemainingOrDefault);
        Assert.That(snapshot.Queues.Keys, Is.EqualTo(new[] { 0 }), "kept for the guest's reset to clear");
    }

    [Test]
    public async Task Supervisor_must_serve_commands_kept_during_an_attempt_in_their_order()
    {
        var backends = new BackendFactory();
        Harness h = Start(backends.Options() with { ReconnectMinBackoff = TimeSpan.FromSeconds(30), ReconnectMaxBackoff = TimeSpan.FromSeconds(30) });
        ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        await h.FirstReady.Task.WaitAsync(RemainingOrDefault);
        first.Dispose();
        await AwaitConditionAsync(async () => (await StateAsync(h)).Phase == SupervisorPhase.BackingOff);
        TaskCompletionSource held = backends.HoldNext();
        await h.Supervisor.Ask<ReconnectScheduled>(ReconnectNow.Instance, RemainingOrDefault);
        Assert.That((await StateAsync(h)).Phase, Is.EqualTo(SupervisorPhase.Connecting));
        for (byte i = 1; i <= 3; i++)
        {
            h.Supervisor.Tell(new WriteConfig(0, [i]), TestActor);
        }

        await ExpectNoMsgAsync(TimeSpan.FromMilliseconds(50));
        held.SetResult();
        using ScriptedBackend second = await backends.NextAsync();
        await second.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        for (byte i = 1; i <= 3; i++)
        {
            using VhostUserMessage m = await second.ExpectAsync(VhostUserRequest.SET_CONFIG);
            Assert.That(m.Payload.Span[VhostUserConfig.HeaderSize], Is.EqualTo(i));
            await ExpectMsgAsync<ConfigWritten>();
        }
    }

    [Test]
    public async Task Supervisor_must_answer_a_message_it_does_not_handle_in_every_phase()
    {
        var backends = new BackendFactory();
        TaskCompletionSource held = backends.HoldNext();
        Harness h = Start(backends.Options() with { Reconnect = true, ReconnectMinBackoff = TimeSpan.FromSeconds(30), ReconnectMaxBackoff = TimeSpan.FromSeconds(30) });
        await ExpectUnsupportedAsync(h, SupervisorPhase.Starting);
        held.SetResult();
        ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        await h.FirstReady.Task.WaitAsync(RemainingOrDefault);
        await ExpectUnsupportedAsync(h, SupervisorPhase.Ready);
        first.Dispose();
        await AwaitConditionAsync(async () => (await StateAsync(h)).Phase == SupervisorPhase.BackingOff);
        await ExpectUnsupportedAsync(h, SupervisorPhase.BackingOff);
        TaskCompletionSource again = backends.HoldNext();
        await h.Supervisor.Ask<ReconnectScheduled>(ReconnectNow.Instance, RemainingOrDefault);
        await ExpectUnsupportedAsync(h, SupervisorPhase.Connecting);
        backends.FailNextWith(new InvalidCastException("unplanned"));
        again.SetResult();
        await h.Parent.ExpectMsgAsync<DeviceEscalated>();
        await ExpectUnsupportedAsync(h, SupervisorPhase.AwaitingDecision);
        h.Parent.Reply(new DeviceDecision("blk0", DeviceFailurePolicy.GiveUp));
        await h.Parent.ExpectMsgAsync<DeviceFailed>();
        await ExpectUnsupportedAsync(h, SupervisorPhase.GaveUp);
    }

    #region Infrastructure

    private sealed record Harness(
        IActorRef Supervisor,
        TestProbe Parent,
        TaskCompletionSource<DeviceInfo> FirstReady,
        TaskCompletionSource<string> Lost,
        TaskCompletionSource<int> Restored,
        TaskCompletionSource<string> Failed);

    private Harness Start(VhostUserDeviceOptions options)
    {
        options = options with { Name = "blk0" };
        TestProbe parent = CreateTestProbe();
        TaskCompletionSource<DeviceInfo> firstReady = VhostUserDevice.CreateFirstReady();
        var events = new VhostUserDeviceEvents();
        var lost = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var restored = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var failed = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        events.ConnectionLost += r => lost.TrySetResult(r);
        events.ConnectionRestored += a => restored.TrySetResult(a);
        events.Failed += r => failed.TrySetResult(r);
        IActorRef supervisor = parent.ChildActorOf(VhostUserDeviceSupervisor.Props(options, firstReady, events), "blk0");
        return new Harness(supervisor, parent, firstReady, lost, restored, failed);
    }

    /// <summary>The first back-end's handshake, then queue 0 started on <paramref name="rig"/>; returns that back-end.</summary>
    private async Task<ScriptedBackend> StartQueueAsync(Harness h, BackendFactory backends, TestRing rig, ulong features)
    {
        ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync(features, Offered, config: s_config);
        await h.FirstReady.Task.WaitAsync(RemainingOrDefault);
        h.Supervisor.Tell(new StartQueue(0, rig.Resources, features), TestActor);
        foreach (VhostUserRequest r in ScriptedBackend.RingStart)
        {
            await first.ExpectAndDropAsync(r);
        }

        await ExpectMsgAsync<QueueStarted>();
        return first;
    }

    private async Task<SupervisorState> StateAsync(Harness h) =>
        await h.Supervisor.Ask<SupervisorState>(GetSupervisorState.Instance, RemainingOrDefault);

    private async Task ExpectUnsupportedAsync(Harness h, SupervisorPhase phase)
    {
        Assert.That((await StateAsync(h)).Phase, Is.EqualTo(phase));
        h.Supervisor.Tell(42, TestActor);
        Assert.That((await ExpectMsgAsync<Status.Failure>()).Cause, Is.InstanceOf<NotSupportedException>(), $"in {phase}");
    }

    private static bool SameData(ConfigData a, ConfigData b) => a.Offset == b.Offset && a.Data.SequenceEqual(b.Data);


    #endregion
}
