using Vmm.Core.Memory;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Queues;

/// <summary>Creates the device side of a virtqueue in the layout the features select.</summary>
public static class DeviceQueue
{
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
