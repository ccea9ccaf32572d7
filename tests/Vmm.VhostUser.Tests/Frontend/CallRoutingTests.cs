using Akka.Actor;
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
/// Where the back-end's call goes (VirtqueueCallRouter, owned by each VirtqueueActor): the
/// vector's own eventfd while it is unmasked, a proxy while it is masked (the pending bit records
/// calls, the unmask delivers exactly one), the new vector's eventfd after queue_msix_vector
/// changes, always a proxy for a function-backed line; each change is a SET_VRING_CALL that the
/// guest's write waits for.
/// </summary>
[TestFixture]
public sealed class CallRoutingTests : AkkaTest
{
    private const VhostUserProtocolFeatures Offered = VhostUserProtocolFeatures.REPLY_ACK | VhostUserProtocolFeatures.CONFIG;

    private static readonly byte[] s_config = [.. Enumerable.Range(1, 60).Select(i => (byte)i)];

    [Test]
    public async Task A_masked_vector_gets_no_interrupt_its_pending_bit_is_set_and_the_unmask_delivers_exactly_one()
    {
        using var irq = new EventFd();
        var line = new EventBackedInterruptLine(5, irq);
        await using Started s = await StartAsync(line);
        using (EventFd direct = s.Call)
        {
            direct.Signal();
            Assert.That(irq.Wait(5000), Is.True, "unmasked: the back-end's call is the vector's eventfd");
        }

        // The guest masks the vector: the mask write does not complete before the back-end took the proxy.
        Task mask = Task.Run(line.Mask);
        VhostUserMessage reroute = await s.Backend.ExpectAsync(VhostUserRequest.SET_VRING_CALL, ack: null);
        using var proxy = new EventFd(reroute.TakeFd(0));
        reroute.Dispose();
        Assert.That(mask.IsCompleted, Is.False, "the mask write waits for the back-end's ack");
        await s.Backend.ReplyU64Async(VhostUserRequest.SET_VRING_CALL, 0);
        await mask.WaitAsync(TimeSpan.FromSeconds(10));

        for (int i = 0; i < 3; i++)
        {
            proxy.Signal();
        }

        await AwaitConditionAsync(() => line.IsPending);
        Assert.That(irq.TryConsume(), Is.False, "nothing reached the masked vector");

        // The unmask: back to the vector's eventfd first, then one interrupt for what was missed.
        Task unmask = Task.Run(line.Unmask);
        using (VhostUserMessage back = await s.Backend.ExpectAsync(VhostUserRequest.SET_VRING_CALL))
        using (var direct = new EventFd(back.TakeFd(0)))
        {
            await unmask.WaitAsync(TimeSpan.FromSeconds(10));
            Assert.That(irq.TryConsume(out ulong delivered), Is.True);
            Assert.That(delivered, Is.EqualTo(1UL), "exactly one interrupt for three calls while masked");
            Assert.That(line.IsPending, Is.False);
            direct.Signal();
            Assert.That(irq.Wait(5000), Is.True, "the back-end signals the vector itself again");
        }

        QueueStatus status = await StatusAsync(s);
        Assert.That((status.Proxied, status.Reroutes), Is.EqualTo((false, 2L)));
    }

    [Test]
    public async Task A_change_of_the_queues_vector_resends_SET_VRING_CALL_with_the_new_vectors_eventfd()
    {
        using var first = new EventFd();
        using var second = new EventFd();
        var line = new ForwardingInterruptLine(new EventBackedInterruptLine(1, first));
        await using Started s = await StartAsync(line);
        s.Call.Dispose();

        Task retarget = Task.Run(() => line.Retarget(new EventBackedInterruptLine(2, second)));
        using (VhostUserMessage m = await s.Backend.ExpectAsync(VhostUserRequest.SET_VRING_CALL))
        using (var call = new EventFd(m.TakeFd(0)))
        {
            await retarget.WaitAsync(TimeSpan.FromSeconds(10));
            call.Signal();
            Assert.That(second.Wait(5000), Is.True, "the new vector's eventfd");
            Assert.That(first.TryConsume(), Is.False);
        }

        // NO_VECTOR: no interrupt for the queue, so the call goes to a proxy that raises nothing.
        Task none = Task.Run(() => line.Retarget(null));
        using (VhostUserMessage m = await s.Backend.ExpectAsync(VhostUserRequest.SET_VRING_CALL))
        using (var call = new EventFd(m.TakeFd(0)))
        {
            await none.WaitAsync(TimeSpan.FromSeconds(10));
            call.Signal();
            await AwaitConditionAsync(async () => (await StatusAsync(s)).ProxiedInterrupts == 1);
            Assert.That(first.TryConsume() || second.TryConsume(), Is.False);
        }
    }

    [Test]
    public async Task A_function_backed_line_is_raised_from_a_proxy_watched_by_the_notifier_loop()
    {
        int raised = 0;
        var line = new FunctionBackedInterruptLine(7, _ => Interlocked.Increment(ref raised));
        await using Started s = await StartAsync(line);
        using (EventFd call = s.Call)
        {
            call.Signal();
            await AwaitConditionAsync(() => Volatile.Read(ref raised) == 1);
            call.Signal();
            await AwaitConditionAsync(() => Volatile.Read(ref raised) == 2);
        }

        QueueStatus status = await StatusAsync(s);
        Assert.That((status.Proxied, status.ProxiedInterrupts, status.Reroutes), Is.EqualTo((true, 2L, 0L)));
    }

    [Test]
    public async Task A_ring_replayed_while_its_vector_is_masked_calls_the_proxy()
    {
        using var irq = new EventFd();
        var line = new EventBackedInterruptLine(5, irq);
        Started s = await StartAsync(line, reconnect: true);
        s.Call.Dispose();

        // No back-end: the mask changes nothing on the wire, but the next set-up follows it.
        s.Backend.Dispose();
        await s.Lost.Task.WaitAsync(TimeSpan.FromSeconds(10));
        line.Mask();
        using ScriptedBackend second = await s.Backends.NextAsync();
        await second.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        foreach (VhostUserRequest r in ScriptedBackend.RingStart.Take(5))
        {
            await second.ExpectAndDropAsync(r);
        }

        using (VhostUserMessage m = await second.ExpectAsync(VhostUserRequest.SET_VRING_CALL))
        using (var call = new EventFd(m.TakeFd(0)))
        {
            await second.ExpectAndDropAsync(VhostUserRequest.SET_VRING_KICK);
            await second.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ENABLE);
            await s.Restored.Task.WaitAsync(TimeSpan.FromSeconds(10));

            // The replay raised the line once (a completion published without its call): pending,
            // not delivered. Cleared here, so that what follows is the proxied call alone.
            Assert.That(line.ClearPending(), Is.True);
            call.Signal();
            await AwaitConditionAsync(() => line.IsPending);
            Assert.That(irq.TryConsume(), Is.False, "the masked vector got nothing");
        }

        await s.DisposeAsync();
    }

    #region Infrastructure

    /// <summary>A connected device with queue 0 started on <c>line</c>; <see cref="Call"/> is the call fd the back-end got.</summary>
    private sealed class Started(BackendFactory backends, ScriptedBackend backend, VhostUserDevice device, GuestMemory memory, EventFd kick, EventFd call) : IAsyncDisposable
    {
        public BackendFactory Backends { get; } = backends;

        public ScriptedBackend Backend { get; } = backend;

        public VhostUserDevice Device { get; } = device;

        public EventFd Call { get; } = call;

        public TaskCompletionSource<string> Lost { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource<int> Restored { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public ValueTask DisposeAsync()
        {
            Device.Dispose();
            Backend.Dispose();
            kick.Dispose();
            memory.Dispose();
            return ValueTask.CompletedTask;
        }
    }

    private async Task<Started> StartAsync(InterruptLine line, bool reconnect = false)
    {
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options() with { Reconnect = reconnect });
        ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync(protocolFeatures: Offered, config: s_config);
        VhostUserDevice device = await connect;
        var memory = GuestMemory.Create(1 << 20);
        var kick = new EventFd();
        var resources = new VirtqueueResources(new VirtqueueParams(64, 0x1000, 0x2000, 0x3000), memory, kick, line);
        Task start = Task.Run(() => device.StartQueue(0, resources, ScriptedBackend.DefaultFeatures));
        foreach (VhostUserRequest r in ScriptedBackend.RingStart.Take(5))
        {
            await backend.ExpectAndDropAsync(r);
        }

        VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_VRING_CALL);
        var call = new EventFd(m.TakeFd(0));
        m.Dispose();
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_KICK);
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ENABLE);
        await start.WaitAsync(TimeSpan.FromSeconds(10));
        var started = new Started(backends, backend, device, memory, kick, call);
        device.ConnectionLost += r => started.Lost.TrySetResult(r);
        device.ConnectionRestored += a => started.Restored.TrySetResult(a);
        return started;
    }

    private async Task<QueueStatus> StatusAsync(Started s)
    {
        IActorRef queue = await Sys.ActorSelection(s.Device.Supervisor.Path / VhostUserDeviceSupervisor.ConnectionName / "queue-0")
            .ResolveOne(TimeSpan.FromSeconds(5));
        return await queue.Ask<QueueStatus>(GetQueueStatus.Instance, TimeSpan.FromSeconds(5));
    }

    #endregion
}
