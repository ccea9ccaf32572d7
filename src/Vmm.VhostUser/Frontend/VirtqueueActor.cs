using Akka.Actor;
using Akka.Event;
using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Virtio.Queues;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// One started queue of a vhost-user device, child of its <see cref="VhostUserDeviceActor"/>.
/// It owns the queue's notification plumbing, never its data: the back-end reads the rings.
/// <list type="bullet">
/// <item>Kick: the transport's own eventfd (<see cref="VirtqueueResources.Kick"/>) goes to
/// SET_VRING_KICK as it is; the transport signals it, the back-end waits on it.</item>
/// <item>Call, event-backed line: the line's eventfd goes to SET_VRING_CALL directly (an irqfd
/// in all but name); nothing runs here.</item>
/// <item>Call, function-backed line: this actor creates an eventfd for SET_VRING_CALL and a
/// dedicated thread that blocks on it and calls <see cref="InterruptLine.Raise"/> (a Tell to the
/// InterruptControllerActor). No actor message per interrupt passes through this mailbox
/// (DESIGN.md, "Data plane off the mailbox"; STACK.md section 4: a blocked thread is the fastest waker).</item>
/// </list>
/// </summary>
public sealed class VirtqueueActor : ReceiveActor
{
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly int _index;
    private readonly InterruptLine _line;
    private readonly EventFd? _proxyCall;
    private Thread? _waiter;
    private long _raised;

    public VirtqueueActor(int index, VirtqueueResources resources, EventFd? proxyCall)
    {
        _index = index;
        _line = resources.Interrupt;
        _proxyCall = proxyCall;
        Receive<GetQueueStatus>(HandleGetStatus);
    }

    /// <summary>
    /// Props for queue <paramref name="index"/>. <paramref name="proxyCall"/> comes from
    /// <see cref="CreateProxyCall"/>; the actor owns it from now on (disposed when it stops).
    /// </summary>
    public static Props Props(int index, VirtqueueResources resources, EventFd? proxyCall) =>
        Akka.Actor.Props.Create(() => new VirtqueueActor(index, resources, proxyCall));

    /// <summary>
    /// The eventfd to hand to SET_VRING_CALL for <paramref name="line"/>: its own for an
    /// event-backed line (<paramref name="proxy"/> null), a new one to proxy otherwise.
    /// </summary>
    public static EventFd CallEventFdFor(InterruptLine line, out EventFd? proxy)
    {
        proxy = line.EventFd is null ? CreateProxyCall() : null;
        return line.EventFd ?? proxy!;
    }

    /// <summary>A fresh eventfd for a function-backed line's calls.</summary>
    public static EventFd CreateProxyCall() => new();

    protected override void PreStart()
    {
        if (_proxyCall is null)
        {
            return;
        }

        EventFd call = _proxyCall;
        InterruptLine line = _line;
        _waiter = new Thread(() => WaitForCalls(call, line))
        {
            IsBackground = true,
            Name = $"vhost-user call {Self.Path.Parent.Parent.Name}/{_index}",
        };
        _waiter.Start();
    }

    protected override void PostStop()
    {
        // Dispose wakes the waiter (Wait returns false), which then ends.
        _proxyCall?.Dispose();
        if (_waiter is not null && !_waiter.Join(TimeSpan.FromSeconds(2)))
        {
            _log.Warning("Call waiter of queue {0} did not end within 2 s", _index);
        }
    }

    private void WaitForCalls(EventFd call, InterruptLine line)
    {
        // The back-end may have set O_NONBLOCK on the shared open file (qemu-storage-daemon 7.2
        // does); EventFd.Wait polls first, so it keeps blocking correctly.
        while (call.Wait())
        {
            Interlocked.Increment(ref _raised);
            line.Raise();
        }
    }

    private void HandleGetStatus(GetQueueStatus message) =>
        Sender.Tell(new QueueStatus(_index, _proxyCall is not null, Interlocked.Read(ref _raised)));
}
