using Akka.Actor;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// One started queue of a vhost-user device, child of its <see cref="VhostUserConnectionActor"/>.
/// It owns the queue's notifiers, never its data (the back-end reads the rings):
/// <list type="bullet">
/// <item>Kick: the transport's own eventfd goes to SET_VRING_KICK as it is; the transport signals
/// it, the back-end waits on it.</item>
/// <item>Call: its <see cref="VirtqueueCallRouter"/> decides where the back-end's call goes (the
/// guest's vector eventfd while that is unmasked, else a proxy watched by the VM's notifier loop)
/// and sends SET_VRING_CALL again whenever the guest masks, unmasks or re-targets the vector.</item>
/// </list>
/// No message per interrupt passes through this mailbox: the fast path has nothing of ours on
/// it, and the proxy's watch raises the line from the notifier loop's thread. The actor carries
/// the queue's lifecycle: its notifiers live exactly as long as it does.
/// </summary>
public sealed class VirtqueueActor : ReceiveActor
{
    private readonly VirtqueueCallRouter _router;

    public VirtqueueActor(VirtqueueCallRouter router)
    {
        _router = router;
        Receive<GetQueueStatus>(HandleGetStatus);
        Receive<Status>(_ => { }); // a stray answer is not answered back
        ReceiveAny(m => Sender.Tell(new Status.Failure(new NotSupportedException(
            $"Queue {_router.Index} does not handle {m.GetType().Name}."))));
    }

    /// <summary>
    /// Props for the queue that <paramref name="router"/> routes. The router is made by the
    /// connection (it must exist before the ring's SET_VRING_CALL); the actor owns it from now on
    /// and closes it when it stops.
    /// </summary>
    public static Props Props(VirtqueueCallRouter router) =>
        Akka.Actor.Props.Create(() => new VirtqueueActor(router));

    protected override void PostStop() => _router.Dispose();

    private void HandleGetStatus(GetQueueStatus message) =>
        Sender.Tell(new QueueStatus(_router.Index, _router.IsProxied, _router.ProxiedInterrupts, _router.Reroutes));
}
