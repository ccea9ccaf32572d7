using System.Buffers.Binary;

namespace Vmm.VhostUser.Backend;

/// <summary>
/// How our back-end frames the device state it moves over a SET_DEVICE_STATE_FD channel: the
/// bytes of <see cref="Vmm.Virtio.IVirtioDevice.SaveState"/> behind a 16-byte header, so a
/// destination can tell a truncated or foreign stream from a state it can load.
/// </summary>
/// <remarks>
/// <code>
/// 0  u32 magic    "VUDS" (0x53445556 little-endian)
/// 4  u16 version  1
/// 6  u16 device id (virtio)
/// 8  u32 length   of the state that follows
/// 12 u32 reserved 0
/// 16 state[length]
/// </code>
/// All fields little-endian. The front-end treats the whole frame as opaque bytes.
/// </remarks>
public static class DeviceStateFrame
{
    public const uint Magic = 0x53445556;
    public const ushort Version = 1;
    public const int HeaderSize = 16;

    /// <summary>The largest device state a back-end accepts (1 MiB); checked before allocating.</summary>
    public const int MaxStateSize = 1 << 20;

    public static byte[] Encode(ushort deviceId, ReadOnlySpan<byte> state)
    {
        if (state.Length > MaxStateSize)
        {
            throw new ArgumentException($"A device state of {state.Length} bytes exceeds the {MaxStateSize}-byte limit.", nameof(state));
        }

        byte[] frame = new byte[HeaderSize + state.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(frame, Magic);
        BinaryPrimitives.WriteUInt16LittleEndian(frame.AsSpan(4), Version);
        BinaryPrimitives.WriteUInt16LittleEndian(frame.AsSpan(6), deviceId);
        BinaryPrimitives.WriteUInt32LittleEndian(frame.AsSpan(8), (uint)state.Length);
        state.CopyTo(frame.AsSpan(HeaderSize));
        return frame;
    }

    /// <summary>The state inside <paramref name="frame"/>; <see cref="InvalidDataException"/> with one sentence when it is not a valid frame for <paramref name="deviceId"/>.</summary>
    public static ReadOnlySpan<byte> Decode(ReadOnlySpan<byte> frame, ushort deviceId)
    {
        if (frame.Length < HeaderSize)
        {
            throw new InvalidDataException($"Device state of {frame.Length} bytes is shorter than its {HeaderSize}-byte header.");
        }

        uint magic = BinaryPrimitives.ReadUInt32LittleEndian(frame);
        ushort version = BinaryPrimitives.ReadUInt16LittleEndian(frame[4..]);
        ushort id = BinaryPrimitives.ReadUInt16LittleEndian(frame[6..]);
        uint length = BinaryPrimitives.ReadUInt32LittleEndian(frame[8..]);
        if (magic != Magic)
        {
            throw new InvalidDataException($"Device state starts with 0x{magic:x8}, not the device state magic.");
        }

        if (version != Version)
        {
            throw new InvalidDataException($"Device state version {version} is not supported (expected {Version}).");
        }

        if (id != deviceId)
        {
            throw new InvalidDataException($"Device state belongs to virtio device id {id}, not {deviceId}.");
        }

        if (length != (uint)(frame.Length - HeaderSize))
        {
            throw new InvalidDataException($"Device state header announces {length} bytes but {frame.Length - HeaderSize} follow.");
        }

        return frame[HeaderSize..];
    }
}
