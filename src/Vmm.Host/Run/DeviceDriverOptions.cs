using Vmm.Virtio;
using Vmm.Virtio.Driver;

namespace Vmm.Host.Run;

/// <summary>What the guest driver asks of each kind of device: the device-specific features it accepts and how many queues it sets up.</summary>
public static class DeviceDriverOptions
{
    /// <summary><paramref name="common"/> (ring features, queue size) with the choices for <paramref name="source"/>'s kind.</summary>
    public static VirtioDriverOptions For(IDeviceSource source, IVirtioDevice device, RunOptions options, VirtioDriverOptions common)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(common);
        return source.Kind switch
        {
            "blk" => common with { Features = BlkGuest.WantedFeatures },
            _ => common,
        };
    }
}
