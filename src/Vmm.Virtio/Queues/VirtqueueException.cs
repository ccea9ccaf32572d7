namespace Vmm.Virtio.Queues;

/// <summary>The driver broke the ring's rules; the device goes to NEEDS_RESET (virtio 1.2, 2.1.2).</summary>
public sealed class VirtqueueException : Exception
{
    public VirtqueueException(string message) : base(message)
    {
    }

    public VirtqueueException(string message, Exception inner) : base(message, inner)
    {
    }
}
