using Vmm.Core.Memory;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Backend;

/// <summary>What a back-end offers its front-ends, and the limits it holds them to.</summary>
public sealed record VhostUserBackendOptions
{
    /// <summary>
    /// Protocol features the back-end implements and offers (vhost-user.rst, "Protocol features").
    /// Bits 20 and up are never offered: implementations disagree on their numbering.
    /// </summary>
    public const VhostUserProtocolFeatures Implemented =
        VhostUserProtocolFeatures.MQ |
        VhostUserProtocolFeatures.LOG_SHMFD |
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

    /// <summary>
    /// What to do with guest memory (and inflight regions) whose file the front-end can still
    /// shrink (<see cref="UnsealedMemoryPolicy"/>): guard it (the default: QEMU's
    /// memory-backend-file on /dev/shm or hugetlbfs keeps working) or refuse it
    /// (<c>vmm serve --memory strict</c>).
    /// </summary>
    public UnsealedMemoryPolicy UnsealedMemory { get; init; } = UnsealedMemoryPolicy.Guard;

    /// <summary>
    /// The most bytes of front-end memory mapped at once (memory table and inflight region):
    /// 16 TiB, an eighth of the x86-64 user address space, by default. Sizes are checked before
    /// anything is mapped.
    /// </summary>
    public ulong MaxMappedBytes { get; init; } = 16UL << 40;

    /// <summary>
    /// How long a new connection may stay silent before its first whole message. Front-ends
    /// speak at once (QEMU sends GET_FEATURES as soon as it connects); a client that does not
    /// is dropped, since connections are served one at a time and it would block the next.
    /// </summary>
    public TimeSpan FirstMessageTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// How long a message may take to arrive whole once its first byte came. Between messages a
    /// front-end may be silent for as long as it likes (a running VM sends nothing for hours).
    /// </summary>
    public TimeSpan MessageTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>How long a SET_DEVICE_STATE_FD transfer may take before it is abandoned.</summary>
    public TimeSpan DeviceStateTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// TEST ONLY: offer LOG_ALL and accept the log, but never mark the data buffers the device
    /// writes in it (the rings are still logged, so the guest's driver stays consistent), so that
    /// a live migration test can show it detects a back-end that does not log its data
    /// (docs/migration.md). Never set in production: a guest migrated this way loses what the
    /// device wrote meanwhile.
    /// </summary>
    public bool TestIgnoreDirtyLog { get; init; }

    /// <summary>How long the front-end may take to ack a back-end request before the back-end channel is closed.</summary>
    public TimeSpan BackendReplyTimeout { get; init; } = TimeSpan.FromSeconds(5);
}
