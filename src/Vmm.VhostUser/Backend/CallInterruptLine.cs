using Vmm.Core.Events;
using Vmm.Core.Interrupts;

namespace Vmm.VhostUser.Backend;

/// <summary>
/// A ring's used-buffer notification: the call eventfd the front-end gave with SET_VRING_CALL.
/// The front-end may replace it while the ring runs ("a new call fd on a running ring takes
/// effect"), so the fd is swapped under the queue worker rather than restarting the ring.
/// </summary>
internal sealed class CallInterruptLine : InterruptLine
{
    private EventFd? _call;

    public CallInterruptLine(int vector) : base(vector)
    {
    }

    public override EventFd? EventFd => Volatile.Read(ref _call);

    /// <summary>Installs <paramref name="call"/> (null: no fd, the front-end polls) and returns the previous one.</summary>
    public EventFd? Swap(EventFd? call) => Interlocked.Exchange(ref _call, call);

    protected override void Deliver() => Volatile.Read(ref _call)?.Signal();
}
