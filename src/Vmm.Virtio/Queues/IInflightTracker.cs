namespace Vmm.Virtio.Queues;

/// <summary>
/// Told when a chain is taken from the ring and when it is returned, so that a vhost-user
/// back-end can keep the shared inflight region up to date (vhost-user.rst, "Inflight I/O
/// tracking") and resubmit what was in flight after a crash. Called on the queue's worker.
/// </summary>
public interface IInflightTracker
{
    /// <summary>A chain with head (split) or buffer id (packed) <paramref name="head"/> was taken from the ring.</summary>
    void OnPopped(ushort head);

    /// <summary>
    /// The chain <paramref name="head"/> is about to be returned: its used element is written but
    /// the used index does not cover it yet. A tracker records the batch here, so a crash right
    /// after publishing can be repaired (vhost-user.rst, "When supplying used buffers").
    /// </summary>
    void OnCompleting(ushort head)
    {
    }

    /// <summary>The chain <paramref name="head"/> was returned to the driver (its used entry published).</summary>
    void OnCompleted(ushort head);
}
