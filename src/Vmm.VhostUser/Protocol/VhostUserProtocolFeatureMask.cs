namespace Vmm.VhostUser.Protocol;

/// <summary>Masks and helpers for <see cref="VhostUserProtocolFeatures"/>.</summary>
public static class VhostUserProtocolFeatureMask
{
    /// <summary>
    /// Bits 0..19: every bit the spec defined before the shared-memory extensions. Bits above this
    /// are read differently by different peers (see <see cref="VhostUserProtocolFeatures.SHMEM"/>),
    /// so they are not offered or accepted unless asked for explicitly.
    /// </summary>
    public const VhostUserProtocolFeatures Known = (VhostUserProtocolFeatures)((1UL << 20) - 1);

    /// <summary>The bits of <paramref name="features"/> outside <see cref="Known"/>.</summary>
    public static VhostUserProtocolFeatures Unknown(VhostUserProtocolFeatures features) => features & ~Known;

    /// <summary>True when every bit in <paramref name="required"/> is set in <paramref name="features"/>.</summary>
    public static bool HasAll(VhostUserProtocolFeatures features, VhostUserProtocolFeatures required) =>
        (features & required) == required;

    /// <summary>
    /// What a front-end should send in SET_PROTOCOL_FEATURES: what the back-end offered, what we want,
    /// and nothing outside <see cref="Known"/> unless <paramref name="allowBeyondKnown"/> names it.
    /// </summary>
    public static VhostUserProtocolFeatures Negotiate(
        VhostUserProtocolFeatures offered,
        VhostUserProtocolFeatures wanted,
        VhostUserProtocolFeatures allowBeyondKnown = VhostUserProtocolFeatures.None) =>
        offered & wanted & (Known | allowBeyondKnown);

    /// <summary>
    /// vhost-user.rst, "In-band notifications": negotiating INBAND_NOTIFICATIONS without both
    /// BACKEND_REQ and REPLY_ACK is an error; the back-end should close the connection.
    /// Returns null when consistent, otherwise a reason.
    /// </summary>
    public static string? CheckConsistency(VhostUserProtocolFeatures acked)
    {
        if ((acked & VhostUserProtocolFeatures.INBAND_NOTIFICATIONS) != 0 &&
            !HasAll(acked, VhostUserProtocolFeatures.BACKEND_REQ | VhostUserProtocolFeatures.REPLY_ACK))
        {
            return "INBAND_NOTIFICATIONS requires BACKEND_REQ and REPLY_ACK (vhost-user.rst, In-band notifications)";
        }

        if ((acked & VhostUserProtocolFeatures.BACKEND_SEND_FD) != 0 &&
            (acked & VhostUserProtocolFeatures.BACKEND_REQ) == 0)
        {
            return "BACKEND_SEND_FD requires BACKEND_REQ (vhost-user.rst, Back-end communication)";
        }

        return null;
    }
}
