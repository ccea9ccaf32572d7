using System.Numerics;
using Vmm.Virtio.Spec;

namespace Vmm.Host.Run;

/// <summary>Names of virtio feature bits as the spec spells them, for <c>probe</c>.</summary>
public static class FeatureNames
{
    private static readonly Dictionary<int, string> Common = new()
    {
        [24] = "NOTIFY_ON_EMPTY",
        [27] = "ANY_LAYOUT",
        [28] = "INDIRECT_DESC",
        [29] = "EVENT_IDX",
        [32] = "VERSION_1",
        [33] = "ACCESS_PLATFORM",
        [34] = "RING_PACKED",
        [35] = "IN_ORDER",
        [36] = "ORDER_PLATFORM",
        [37] = "SR_IOV",
        [38] = "NOTIFICATION_DATA",
        [39] = "NOTIF_CONFIG_DATA",
        [40] = "RING_RESET",
    };

    private static readonly Dictionary<int, string> Blk = new()
    {
        [1] = "SIZE_MAX",
        [2] = "SEG_MAX",
        [4] = "GEOMETRY",
        [5] = "RO",
        [6] = "BLK_SIZE",
        [9] = "FLUSH",
        [10] = "TOPOLOGY",
        [11] = "CONFIG_WCE",
        [12] = "MQ",
        [13] = "DISCARD",
        [14] = "WRITE_ZEROES",
        [15] = "LIFETIME",
        [16] = "SECURE_ERASE",
    };

    // virtio 1.2, 5.1.3.
    private static readonly Dictionary<int, string> Net = new()
    {
        [0] = "CSUM",
        [1] = "GUEST_CSUM",
        [2] = "CTRL_GUEST_OFFLOADS",
        [3] = "MTU",
        [5] = "MAC",
        [6] = "GSO",
        [7] = "GUEST_TSO4",
        [8] = "GUEST_TSO6",
        [9] = "GUEST_ECN",
        [10] = "GUEST_UFO",
        [11] = "HOST_TSO4",
        [12] = "HOST_TSO6",
        [13] = "HOST_ECN",
        [14] = "HOST_UFO",
        [15] = "MRG_RXBUF",
        [16] = "STATUS",
        [17] = "CTRL_VQ",
        [18] = "CTRL_RX",
        [19] = "CTRL_VLAN",
        [20] = "CTRL_RX_EXTRA",
        [21] = "GUEST_ANNOUNCE",
        [22] = "MQ",
        [23] = "CTRL_MAC_ADDR",
    };

    // virtio 1.2, 5.11.3.
    private static readonly Dictionary<int, string> Fs = new()
    {
        [0] = "NOTIFICATION",
    };

    /// <summary>"VERSION_1 INDIRECT_DESC ..." in bit order; unknown bits as <c>bit N</c>.</summary>
    public static string Describe(ulong features, VirtioDeviceId device)
    {
        var names = new List<string>();
        ulong left = features;
        while (left != 0)
        {
            int bit = BitOperations.TrailingZeroCount(left);
            left &= left - 1;
            Dictionary<int, string>? own = device switch
            {
                VirtioDeviceId.Block => Blk,
                VirtioDeviceId.Net => Net,
                VirtioDeviceId.FileSystem => Fs,
                _ => null,
            };
            if (Common.TryGetValue(bit, out string? name) || (own?.TryGetValue(bit, out name) ?? false))
            {
                names.Add(name);
            }
            else
            {
                names.Add($"bit{bit}");
            }
        }

        return names.Count == 0 ? "(none)" : string.Join(' ', names);
    }
}
