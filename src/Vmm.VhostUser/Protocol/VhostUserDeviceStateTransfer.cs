using System.Runtime.InteropServices;

namespace Vmm.VhostUser.Protocol;

/// <summary>
/// "Device state transfer parameters" (vhost-user.rst), the payload of SET_DEVICE_STATE_FD:
/// transfer direction u32, migration phase u32 = 8 bytes.
/// </summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct VhostUserDeviceStateTransfer
{
    public const int Size = 8;

    /// <summary>Bit 8 of the SET_DEVICE_STATE_FD reply: no fd is returned.</summary>
    public const ulong ReplyInvalidFdFlag = 0x100;

    /// <summary>Bits 0-7 of the SET_DEVICE_STATE_FD reply: 0 on success.</summary>
    public const ulong ReplyErrorMask = 0xFF;

    public VhostUserTransferDirection TransferDirection;
    public VhostUserMigrationPhase MigrationPhase;

    public VhostUserDeviceStateTransfer(VhostUserTransferDirection direction, VhostUserMigrationPhase phase)
    {
        TransferDirection = direction;
        MigrationPhase = phase;
    }

    public static VhostUserDeviceStateTransfer Read(ReadOnlySpan<byte> source) =>
        WireStruct.Read<VhostUserDeviceStateTransfer>(source, "device state transfer");

    public readonly int Write(Span<byte> destination) => WireStruct.Write(destination, in this);

    /// <summary>Direction is SAVE or LOAD, phase is STOPPED: the only values the spec defines.</summary>
    public readonly bool IsValid =>
        (uint)TransferDirection <= (uint)VhostUserTransferDirection.LOAD &&
        MigrationPhase == VhostUserMigrationPhase.STOPPED;

    /// <summary>
    /// Builds the SET_DEVICE_STATE_FD reply u64: error code in bits 0-7, bit 8 set when no fd
    /// follows. The spec forbids both an error and an fd.
    /// </summary>
    public static ulong EncodeReply(byte error, bool returnsFd)
    {
        if (error != 0 && returnsFd)
        {
            throw new ArgumentException("SET_DEVICE_STATE_FD must not both indicate an error and return an fd.");
        }

        return error | (returnsFd ? 0 : ReplyInvalidFdFlag);
    }

    /// <summary>Parses the SET_DEVICE_STATE_FD reply u64; rejects reserved bits and error-with-fd.</summary>
    public static (byte Error, bool HasFd) ParseReply(ulong value)
    {
        if ((value & ~(ReplyErrorMask | ReplyInvalidFdFlag)) != 0)
        {
            ProtocolThrowHelper.ThrowProtocol($"SET_DEVICE_STATE_FD reply 0x{value:x} has reserved bits set");
        }

        byte error = (byte)(value & ReplyErrorMask);
        bool hasFd = (value & ReplyInvalidFdFlag) == 0;
        if (error != 0 && hasFd)
        {
            ProtocolThrowHelper.ThrowProtocol(
                $"SET_DEVICE_STATE_FD reply reports error {error} and also claims an fd");
        }

        return (error, hasFd);
    }
}

/// <summary>Transfer direction of SET_DEVICE_STATE_FD (vhost-user.rst).</summary>
public enum VhostUserTransferDirection : uint
{
    /// <summary>Back-end to front-end: the source side of migration.</summary>
    SAVE = 0,

    /// <summary>Front-end to back-end: the destination side of migration.</summary>
    LOAD = 1,
}

/// <summary>Migration phase of SET_DEVICE_STATE_FD (vhost-user.rst).</summary>
public enum VhostUserMigrationPhase : uint
{
    /// <summary>The guest is stopped and the device suspended.</summary>
    STOPPED = 0,
}
