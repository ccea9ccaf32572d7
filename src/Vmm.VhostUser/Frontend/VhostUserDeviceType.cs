using System.Globalization;
using Vmm.Virtio.Spec;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// The device type names the command line and embedders use for vhost-user devices
/// (<c>type=blk</c>, ..., or <c>device-id=N</c>), mapped to virtio device ids (virtio 1.2, 5).
/// </summary>
public static class VhostUserDeviceType
{
    private static readonly Dictionary<string, VirtioDeviceId> s_byName = new(StringComparer.OrdinalIgnoreCase)
    {
        ["blk"] = VirtioDeviceId.Block,
        ["net"] = VirtioDeviceId.Net,
        ["console"] = VirtioDeviceId.Console,
        ["rng"] = VirtioDeviceId.Entropy,
        ["fs"] = VirtioDeviceId.FileSystem,
        ["gpio"] = VirtioDeviceId.Gpio,
        ["vsock"] = VirtioDeviceId.Socket,
        ["scsi"] = VirtioDeviceId.Scsi,
        ["input"] = VirtioDeviceId.Input,
        ["gpu"] = VirtioDeviceId.Gpu,
        ["i2c"] = VirtioDeviceId.I2cAdapter,
        ["sound"] = VirtioDeviceId.Audio,
        ["can"] = VirtioDeviceId.Can,
    };

    /// <summary>The names accepted by <see cref="TryParse"/>, for help and error texts.</summary>
    public static IReadOnlyCollection<string> Names => s_byName.Keys;

    /// <summary>Parses a type name (<c>blk</c>) or <c>device-id=N</c> / a bare number.</summary>
    public static bool TryParse(string text, out VirtioDeviceId id)
    {
        id = default;
        if (string.IsNullOrWhiteSpace(text))
        {
            return false;
        }

        string value = text.Trim();
        if (s_byName.TryGetValue(value, out id))
        {
            return true;
        }

        if (value.StartsWith("device-id=", StringComparison.OrdinalIgnoreCase))
        {
            value = value["device-id=".Length..];
        }

        if (ushort.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out ushort n) && n != 0)
        {
            id = (VirtioDeviceId)n;
            return true;
        }

        return false;
    }

    /// <summary>As <see cref="TryParse"/>, throwing <see cref="ArgumentException"/> with the accepted names.</summary>
    public static VirtioDeviceId Parse(string text) =>
        TryParse(text, out VirtioDeviceId id)
            ? id
            : throw new ArgumentException(
                $"Unknown vhost-user device type '{text}': use one of {string.Join(", ", Names)} or device-id=N.", nameof(text));

    /// <summary>The short name of <paramref name="id"/> (<c>blk</c>), or <c>device-id=N</c>.</summary>
    public static string NameOf(VirtioDeviceId id)
    {
        foreach ((string name, VirtioDeviceId value) in s_byName)
        {
            if (value == id)
            {
                return name;
            }
        }

        return $"device-id={(ushort)id}";
    }

    /// <summary>
    /// Bytes of device configuration to fetch with GET_CONFIG: the size of the device's config
    /// structure in virtio 1.2 section 5 (QEMU uses the same sizes; a back-end rejects a larger
    /// GET_CONFIG than its structure). 0 for devices without config (rng) and unknown ids.
    /// </summary>
    public static int DefaultConfigSize(VirtioDeviceId id) => id switch
    {
        VirtioDeviceId.Block => 60,         // struct virtio_blk_config up to write_zeroes_may_unmap + padding
        VirtioDeviceId.Net => 12,           // mac, status, max_virtqueue_pairs, mtu
        VirtioDeviceId.Console => 12,       // cols, rows, max_nr_ports, emerg_wr
        VirtioDeviceId.FileSystem => 40,    // tag[36], num_request_queues
        VirtioDeviceId.Socket => 8,         // guest_cid
        VirtioDeviceId.Scsi => 36,
        VirtioDeviceId.Input => 136,
        VirtioDeviceId.Gpu => 16,
        VirtioDeviceId.Audio => 16,
        VirtioDeviceId.Gpio => 8,
        _ => 0,
    };
}
