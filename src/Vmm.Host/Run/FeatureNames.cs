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

    /// <summary>"VERSION_1 INDIRECT_DESC ..." in bit order; unknown bits as <c>bit N</c>.</summary>
    public static string Describe(ulong features, VirtioDeviceId device)
    {
        var names = new List<string>();
        ulong left = features;
        while (left != 0)
        {
            int bit = BitOperations.TrailingZeroCount(left);
            left &= left - 1;
            if (Common.TryGetValue(bit, out string? name) || (device == VirtioDeviceId.Block && Blk.TryGetValue(bit, out name)))
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
