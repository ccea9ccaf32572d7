using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace Vmm.Virtio.Spec;

/// <summary>Network device feature bits (virtio 1.2, 5.1.3).</summary>
public static class VirtioNetFeatures
{
    public const ulong CSUM = 1UL << 0;
    public const ulong GUEST_CSUM = 1UL << 1;
    public const ulong CTRL_GUEST_OFFLOADS = 1UL << 2;
    public const ulong MTU = 1UL << 3;

    /// <summary>VIRTIO_NET_F_MAC (5): the device has a MAC address in its config.</summary>
    public const ulong MAC = 1UL << 5;
    public const ulong GUEST_TSO4 = 1UL << 7;
    public const ulong GUEST_TSO6 = 1UL << 8;
    public const ulong GUEST_ECN = 1UL << 9;
    public const ulong GUEST_UFO = 1UL << 10;
    public const ulong HOST_TSO4 = 1UL << 11;
    public const ulong HOST_TSO6 = 1UL << 12;
    public const ulong HOST_ECN = 1UL << 13;
    public const ulong HOST_UFO = 1UL << 14;

    /// <summary>VIRTIO_NET_F_MRG_RXBUF (15): a received packet may span several receive buffers (num_buffers says how many).</summary>
    public const ulong MRG_RXBUF = 1UL << 15;

    /// <summary>VIRTIO_NET_F_STATUS (16): the config's status field (link up, announce) is valid.</summary>
    public const ulong STATUS = 1UL << 16;

    /// <summary>VIRTIO_NET_F_CTRL_VQ (17): a control queue follows the data queues.</summary>
    public const ulong CTRL_VQ = 1UL << 17;

    /// <summary>VIRTIO_NET_F_CTRL_RX (18): receive-mode commands (promiscuous, all-multicast).</summary>
    public const ulong CTRL_RX = 1UL << 18;
    public const ulong CTRL_VLAN = 1UL << 19;
    public const ulong GUEST_ANNOUNCE = 1UL << 21;

    /// <summary>VIRTIO_NET_F_MQ (22): several queue pairs (max_virtqueue_pairs in the config).</summary>
    public const ulong MQ = 1UL << 22;

    /// <summary>VIRTIO_NET_F_CTRL_MAC_ADDR (23): the MAC address can be set on the control queue.</summary>
    public const ulong CTRL_MAC_ADDR = 1UL << 23;
}

/// <summary>Queue indices and wire constants of the network device (virtio 1.2, 5.1.2 and 5.1.6).</summary>
public static class VirtioNet
{
    /// <summary>receiveq1 (5.1.2).</summary>
    public const int ReceiveQueue = 0;

    /// <summary>transmitq1.</summary>
    public const int TransmitQueue = 1;

    /// <summary>controlq without VIRTIO_NET_F_MQ: index 2N with N = 1.</summary>
    public const int ControlQueueWithoutMq = 2;

    /// <summary>Ethernet header: destination, source, EtherType.</summary>
    public const int EthernetHeaderSize = 14;

    /// <summary>The shortest frame without FCS (64 bytes on the wire less the 4-byte FCS).</summary>
    public const int MinimumFrame = 60;

    /// <summary>The longest untagged frame without FCS for a 1500-byte MTU.</summary>
    public const int MaximumFrame = 1514;

    /// <summary>
    /// Without MRG_RXBUF and the GUEST_TSO/UFO features, each receive buffer holds at least 1526
    /// bytes (5.1.6.3.1): the 12-byte header and a 1514-byte frame.
    /// </summary>
    public const int MinimumReceiveBuffer = 1526;

    // Control queue classes and commands (5.1.6.5).
    public const byte VIRTIO_NET_CTRL_RX = 0;
    public const byte VIRTIO_NET_CTRL_RX_PROMISC = 0;
    public const byte VIRTIO_NET_CTRL_RX_ALLMULTI = 1;
    public const byte VIRTIO_NET_CTRL_MAC = 1;
    public const byte VIRTIO_NET_CTRL_MAC_ADDR_SET = 1;
    public const byte VIRTIO_NET_CTRL_ANNOUNCE = 3;
    public const byte VIRTIO_NET_CTRL_ANNOUNCE_ACK = 0;

    /// <summary>The ack byte of a control command.</summary>
    public const byte VIRTIO_NET_OK = 0;
    public const byte VIRTIO_NET_ERR = 1;

    /// <summary>Status bits of the config (5.1.4).</summary>
    public const ushort VIRTIO_NET_S_LINK_UP = 1;
    public const ushort VIRTIO_NET_S_ANNOUNCE = 2;
}

/// <summary>
/// struct virtio_net_hdr (virtio 1.2, 5.1.6): 12 bytes with VERSION_1, whether MRG_RXBUF was
/// negotiated or not (num_buffers is always there; without MRG_RXBUF it is 1 on receive).
/// </summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct VirtioNetHeader
{
    public const int Size = 12;

    public const byte VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
    public const byte VIRTIO_NET_HDR_F_DATA_VALID = 2;
    public const byte VIRTIO_NET_HDR_GSO_NONE = 0;

    public byte Flags;
    public byte GsoType;
    public ushort HdrLen;
    public ushort GsoSize;
    public ushort CsumStart;
    public ushort CsumOffset;
    public ushort NumBuffers;
}

/// <summary>
/// struct virtio_net_config (virtio 1.2, 5.1.4), the fields up to mtu: mac[6] (valid with
/// VIRTIO_NET_F_MAC), status (with STATUS), max_virtqueue_pairs (with MQ), mtu (with MTU).
/// </summary>
public readonly record struct VirtioNetConfig(byte[] Mac, ushort Status, ushort MaxVirtqueuePairs, ushort Mtu)
{
    public const int Size = 12;

    public const int StatusOffset = 6;

    public static VirtioNetConfig Read(ReadOnlySpan<byte> config)
    {
        if (config.Length < Size)
        {
            throw new ArgumentException($"virtio_net_config is read as {Size} bytes, not {config.Length}.", nameof(config));
        }

        return new VirtioNetConfig(
            config[..6].ToArray(),
            BinaryPrimitives.ReadUInt16LittleEndian(config[StatusOffset..]),
            BinaryPrimitives.ReadUInt16LittleEndian(config[8..]),
            BinaryPrimitives.ReadUInt16LittleEndian(config[10..]));
    }

    public void Write(Span<byte> config)
    {
        Mac.AsSpan(0, 6).CopyTo(config);
        BinaryPrimitives.WriteUInt16LittleEndian(config[StatusOffset..], Status);
        BinaryPrimitives.WriteUInt16LittleEndian(config[8..], MaxVirtqueuePairs);
        BinaryPrimitives.WriteUInt16LittleEndian(config[10..], Mtu);
    }
}
