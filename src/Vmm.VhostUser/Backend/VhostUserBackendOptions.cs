using Vmm.Core.Memory;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Backend;

/// <summary>What a back-end offers its front-ends.</summary>
public sealed record VhostUserBackendOptions
{
    /// <summary>
    /// Protocol features the back-end implements and offers (vhost-user.rst, "Protocol features").
    /// Bits 20 and up are never offered: implementations disagree on their numbering.
    /// </summary>
    public const VhostUserProtocolFeatures Implemented =
        VhostUserProtocolFeatures.MQ |
        VhostUserProtocolFeatures.REPLY_ACK |
        VhostUserProtocolFeatures.BACKEND_REQ |
        VhostUserProtocolFeatures.CONFIG |
        VhostUserProtocolFeatures.RESET_DEVICE |
        VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS |
        VhostUserProtocolFeatures.STATUS |
        VhostUserProtocolFeatures.INFLIGHT_SHMFD |
        VhostUserProtocolFeatures.DEVICE_STATE;

    public static VhostUserBackendOptions Default { get; } = new();

    /// <summary>The protocol features offered; a subset of <see cref="Implemented"/>.</summary>
    public VhostUserProtocolFeatures ProtocolFeatures { get; init; } = Implemented;

    /// <summary>The GET_MAX_MEM_SLOTS answer: how many regions ADD_MEM_REG may install.</summary>
    public int MaxMemorySlots { get; init; } = GuestMemory.MaxRegions;
}
