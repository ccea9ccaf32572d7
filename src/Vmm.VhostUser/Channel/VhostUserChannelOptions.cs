using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Channel;

/// <summary>Limits and checks a <see cref="VhostUserChannel"/> applies to every message it receives.</summary>
public sealed record VhostUserChannelOptions
{
    /// <summary>rust-vmm's MAX_MSG_SIZE (0x1000): the largest payload any request of the spec needs.</summary>
    public const int DefaultMaxPayloadSize = 4096;

    public static VhostUserChannelOptions Default { get; } = new();

    /// <summary>
    /// Headers announcing a larger payload are rejected before anything is allocated for it
    /// or read from the socket.
    /// </summary>
    public int MaxPayloadSize { get; init; } = DefaultMaxPayloadSize;

    /// <summary>
    /// Called with each received header after the generic checks (version, reserved bits,
    /// size bound) and before the payload is read; throws <see cref="VhostUserProtocolException"/>
    /// to reject it (for example a size that does not match the request).
    /// </summary>
    public Action<VhostUserHeader>? HeaderValidator { get; init; }
}
