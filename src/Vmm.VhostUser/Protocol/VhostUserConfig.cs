using System.Runtime.InteropServices;

namespace Vmm.VhostUser.Protocol;

/// <summary>
/// The 12-byte head of "Virtio device config space" (vhost-user.rst), used by GET_CONFIG and
/// SET_CONFIG:
/// <code>
/// +--------+------+-------+---------+
/// | offset | size | flags | payload |
/// +--------+------+-------+---------+
///  u32      u32    u32     size bytes (≤ 256)
/// </code>
/// </summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct VhostUserConfig
{
    /// <summary>QEMU's <c>VHOST_USER_CONFIG_HDR_SIZE</c>.</summary>
    public const int HeaderSize = 12;

    /// <summary>QEMU's <c>VHOST_USER_MAX_CONFIG_SIZE</c>: the largest config payload.</summary>
    public const int VHOST_USER_MAX_CONFIG_SIZE = 256;

    public const int MaxPayloadSize = HeaderSize + VHOST_USER_MAX_CONFIG_SIZE;

    public uint Offset;
    public uint Size;
    public VhostUserConfigFlags Flags;

    public VhostUserConfig(uint offset, uint size, VhostUserConfigFlags flags)
    {
        Offset = offset;
        Size = size;
        Flags = flags;
    }

    public static VhostUserConfig Read(ReadOnlySpan<byte> source) =>
        WireStruct.Read<VhostUserConfig>(source, "config header");

    public readonly int Write(Span<byte> destination) => WireStruct.Write(destination, in this);

    /// <summary>
    /// Writes a whole GET_CONFIG/SET_CONFIG payload: header then <paramref name="data"/>.
    /// For a GET_CONFIG request the data is zeros of the wanted size. Returns the bytes written.
    /// </summary>
    public static int WritePayload(Span<byte> destination, uint offset, VhostUserConfigFlags flags, ReadOnlySpan<byte> data)
    {
        if (data.Length > VHOST_USER_MAX_CONFIG_SIZE)
        {
            throw new ArgumentOutOfRangeException(
                nameof(data), data.Length, $"config payload is at most {VHOST_USER_MAX_CONFIG_SIZE} bytes");
        }

        int total = HeaderSize + data.Length;
        if (destination.Length < total)
        {
            ProtocolThrowHelper.ThrowDestinationTooShort(total, destination.Length);
        }

        new VhostUserConfig(offset, (uint)data.Length, flags).Write(destination);
        data.CopyTo(destination[HeaderSize..]);
        return total;
    }

    /// <summary>
    /// Parses a GET_CONFIG/SET_CONFIG payload (request or non-empty reply). Checks that
    /// <c>size</c> equals the bytes that follow the header, that it is at most 256, that
    /// offset + size does not wrap, and that flags is a value the spec defines.
    /// </summary>
    public static VhostUserConfigMessage Parse(ReadOnlySpan<byte> payload)
    {
        var header = Read(payload);
        int dataLength = payload.Length - HeaderSize;
        if (header.Size != (uint)dataLength)
        {
            ProtocolThrowHelper.ThrowProtocol(
                $"config: size field {header.Size} does not match the {dataLength} bytes after the header");
        }

        if (header.Size > VHOST_USER_MAX_CONFIG_SIZE)
        {
            ProtocolThrowHelper.ThrowProtocol(
                $"config: size {header.Size} exceeds VHOST_USER_MAX_CONFIG_SIZE ({VHOST_USER_MAX_CONFIG_SIZE})");
        }

        if (header.Offset + header.Size < header.Offset)
        {
            ProtocolThrowHelper.ThrowProtocol($"config: offset 0x{header.Offset:x} + size {header.Size} wraps");
        }

        if ((uint)header.Flags > (uint)VhostUserConfigFlags.MIGRATION)
        {
            ProtocolThrowHelper.ThrowProtocol($"config: unknown flags value {(uint)header.Flags}");
        }

        return new VhostUserConfigMessage(header, payload.Slice(HeaderSize, dataLength));
    }
}

/// <summary>
/// The flags word of <see cref="VhostUserConfig"/>. The spec defines it as a value, not bits:
/// 0 for front-end writes of writable fields, 1 for live migration (QEMU's
/// <c>VHOST_SET_CONFIG_TYPE_FRONTEND</c>/<c>_MIGRATION</c>). rust-vmm reads it as bit flags 1 and 2;
/// we follow the spec and QEMU, which is what peers send.
/// </summary>
public enum VhostUserConfigFlags : uint
{
    /// <summary>Front-end write of a writable field.</summary>
    FRONTEND = 0,

    /// <summary>Live migration: the back-end may accept writes to read-only fields.</summary>
    MIGRATION = 1,
}

/// <summary>A parsed config payload: the header and the bytes that follow it.</summary>
public readonly ref struct VhostUserConfigMessage
{
    public VhostUserConfigMessage(VhostUserConfig header, ReadOnlySpan<byte> data)
    {
        Header = header;
        Data = data;
    }

    public VhostUserConfig Header { get; }

    public ReadOnlySpan<byte> Data { get; }
}
