using Vmm.Core.Memory;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Queues;

/// <summary>Creates the device side of a virtqueue in the layout the features select.</summary>
public static class DeviceQueue
{
    /// <summary>
    /// The most entries an indirect table may have, whatever the queue size. virtio 1.2,
    /// 2.7.5.3.1 says a driver MUST NOT create a table longer than the queue size, but Linux's
    /// virtio_blk sizes its tables from seg_max alone (seg_max + 2 entries, so a queue smaller
    /// than the seg_max a device advertises gets longer tables); QEMU and libvhost-user bound
    /// a chain by VIRTQUEUE_MAX_SIZE (1024) instead of the queue size, and so does this layer:
    /// the bound is what keeps a chain walk finite and its segment list small, which the
    /// queue size would only do less generously.
    /// </summary>
    public const int MaxIndirectDescriptors = 1024;

    /// <summary>The most segments one chain can have: a direct chain is bounded by the queue size, and one indirect table may follow.</summary>
    internal static int MaxChainSegments(ushort queueSize, bool indirect) => indirect ? queueSize + MaxIndirectDescriptors : queueSize;

    /// <summary>
    /// A packed queue when VIRTIO_F_RING_PACKED was negotiated (2.8), a split one otherwise (2.7).
    /// Validates size, alignment and that every ring area lies inside guest memory.
    /// </summary>
    /// <exception cref="VirtqueueException">The parameters break the spec's rules.</exception>
    public static IDeviceQueue Create(VirtqueueResources resources, ulong negotiatedFeatures, VirtqueueState? initialState, IInflightTracker? tracker = null)
    {
        ArgumentNullException.ThrowIfNull(resources);
        return (negotiatedFeatures & VirtioFeatures.RING_PACKED) != 0
            ? new PackedDeviceQueue(resources, negotiatedFeatures, initialState, tracker)
            : new SplitDeviceQueue(resources, negotiatedFeatures, initialState, tracker);
    }

    internal static void CheckArea(GuestMemory memory, string name, ulong address, ulong length, int alignment)
    {
        if ((address & (ulong)(alignment - 1)) != 0)
        {
            throw new VirtqueueException($"The {name} at 0x{address:x} is not {alignment}-byte aligned (virtio 1.2, 2.6).");
        }

        if (!memory.IsValidRange(address, length))
        {
            throw new VirtqueueException($"The {name} [0x{address:x}, +0x{length:x}) is not inside guest memory.");
        }
    }
}
