using Vmm.Host.Cli;
using Vmm.Virtio;
using Vmm.Virtio.Devices.Blk;
using Vmm.Virtio.Devices.Rng;
using Vmm.Virtio.Spec;

namespace Vmm.Host.Run;

/// <summary>
/// Where one of <c>vmm run</c>'s devices comes from: an in-process device (<c>--device</c>) or,
/// through the same interface, a device whose data plane lives elsewhere. The VM owns and
/// disposes what <see cref="Create"/> returns.
/// </summary>
public interface IDeviceSource
{
    /// <summary>What the device is, for messages and reports (blk, rng).</summary>
    string Kind { get; }

    /// <summary>The virtio device id the guest should find.</summary>
    VirtioDeviceId DeviceId { get; }

    /// <summary>
    /// Makes the device. Throws <see cref="UsageException"/> when it cannot be reached or opened
    /// (a missing disk, an unreachable socket): exit code 2.
    /// </summary>
    IVirtioDevice Create();
}

/// <summary>An in-process device from a <c>--device</c> option.</summary>
public sealed class InProcessDeviceSource(DeviceSpec spec) : IDeviceSource
{
    public DeviceSpec Spec { get; } = spec ?? throw new ArgumentNullException(nameof(spec));

    public string Kind => Spec.Kind;

    public VirtioDeviceId DeviceId => Spec.Kind == "blk" ? VirtioDeviceId.Block : VirtioDeviceId.Entropy;

    public IVirtioDevice Create()
    {
        if (Spec.Kind == "rng")
        {
            return new VirtioRngDevice(Spec.QueueSize);
        }

        string disk = Spec.Disk!;
        if (!File.Exists(disk))
        {
            throw new UsageException($"The disk image '{disk}' does not exist.");
        }

        try
        {
            return new VirtioBlkDevice(new VirtioBlkOptions(disk, Spec.ReadOnly, Spec.Queues, Spec.QueueSize) { Cache = Spec.Cache, Aio = Spec.Aio });
        }
        catch (ArgumentException e)
        {
            // The device refused its options (queue size, an empty image): say what, without the parameter name.
            string message = e.ParamName is null ? e.Message : e.Message.Replace($" (Parameter '{e.ParamName}')", string.Empty, StringComparison.Ordinal);
            throw new UsageException($"--device {Spec.Kind},disk={disk}: {message}", e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new UsageException($"Cannot open the disk image '{disk}': {e.Message}", e);
        }
    }
}
