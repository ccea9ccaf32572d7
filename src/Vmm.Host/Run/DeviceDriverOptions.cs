using Vmm.Virtio;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Spec;

namespace Vmm.Host.Run;

/// <summary>What the guest driver asks of each kind of device: the device-specific features it accepts and how many queues it sets up.</summary>
public static class DeviceDriverOptions
{
    /// <summary>
    /// The net features the guest accepts when offered: the MAC and link status from the config,
    /// mergeable receive buffers (unless <c>--no-mrg-rxbuf</c>), and the control queue with
    /// receive-mode commands. No MQ (one queue pair), no offloads (frames go as they are).
    /// </summary>
    public const ulong NetFeatures =
        VirtioNetFeatures.MAC | VirtioNetFeatures.STATUS | VirtioNetFeatures.MRG_RXBUF | VirtioNetFeatures.CTRL_VQ | VirtioNetFeatures.CTRL_RX;

    /// <summary>
    /// The control queue of a vhost-user net device is the VMM's to serve: QEMU answers it itself
    /// and gives the back-end only the rx/tx rings (DPDK 22.11 offers CTRL_VQ for that reason and
    /// never reads the ring). The front-end here does not serve it, so the guest leaves it alone.
    /// </summary>
    public const ulong NetFeaturesOfVhostUser = NetFeatures & ~(VirtioNetFeatures.CTRL_VQ | VirtioNetFeatures.CTRL_RX);

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
            "net" => ForNet(source, device, options, common),
            _ => common,
        };
    }

    private static VirtioDriverOptions ForNet(IDeviceSource source, IVirtioDevice device, RunOptions options, VirtioDriverOptions common)
    {
        ulong wanted = (source is VhostUserDeviceSource ? NetFeaturesOfVhostUser : NetFeatures) & ~(options.MergeableRxBuffers ? 0 : VirtioNetFeatures.MRG_RXBUF);

        // The driver accepts exactly offered & wanted, so the queues are known now: receiveq1,
        // transmitq1 and, with CTRL_VQ, controlq at 2 (5.1.2, without MQ). A back-end with more
        // (testpmd's 128) keeps the rest unused.
        bool control = (device.DeviceFeatures & wanted & VirtioNetFeatures.CTRL_VQ) != 0;
        return common with { Features = wanted, QueueCount = control ? VirtioNet.ControlQueueWithoutMq + 1 : VirtioNet.TransmitQueue + 1 };
    }
}
