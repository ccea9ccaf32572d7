namespace Vmm.VhostUser.Protocol;

/// <summary>
/// The u64 payload of SET_VRING_KICK, SET_VRING_CALL and SET_VRING_ERR (vhost-user.rst): bits 0-7
/// are the vring index, bit 8 (<see cref="VHOST_USER_VRING_NOFD_MASK"/>) says no fd is attached
/// (poll instead), other bits are reserved. The vring-area u64 of VRING_HOST_NOTIFIER_MSG uses the
/// same encoding.
/// </summary>
public readonly record struct VhostUserVringFile(byte Index, bool NoFd)
{
    public const ulong VHOST_USER_VRING_IDX_MASK = 0xFF;
    public const ulong VHOST_USER_VRING_NOFD_MASK = 0x100;
    public const ulong ReservedMask = ~(VHOST_USER_VRING_IDX_MASK | VHOST_USER_VRING_NOFD_MASK);

    /// <summary>Fds the message must carry: 0 with the NOFD bit, otherwise 1.</summary>
    public int ExpectedFdCount => NoFd ? 0 : 1;

    /// <summary>Parses the u64; throws <see cref="VhostUserProtocolException"/> on reserved bits.</summary>
    public static VhostUserVringFile Parse(ulong value)
    {
        if ((value & ReservedMask) != 0)
        {
            ProtocolThrowHelper.ThrowProtocol(
                $"vring fd payload 0x{value:x} has reserved bits 0x{value & ReservedMask:x} set (only bits 0-8 are defined)");
        }

        return new VhostUserVringFile((byte)(value & VHOST_USER_VRING_IDX_MASK), (value & VHOST_USER_VRING_NOFD_MASK) != 0);
    }

    public static bool TryParse(ulong value, out VhostUserVringFile result)
    {
        if ((value & ReservedMask) != 0)
        {
            result = default;
            return false;
        }

        result = new VhostUserVringFile((byte)(value & VHOST_USER_VRING_IDX_MASK), (value & VHOST_USER_VRING_NOFD_MASK) != 0);
        return true;
    }

    public ulong ToU64() => Index | (NoFd ? VHOST_USER_VRING_NOFD_MASK : 0);
}
