namespace Vmm.VhostUser.Protocol;

/// <summary>
/// Expected payload sizes per request and per reply, from the "request payload" and "reply payload"
/// lines of vhost-user.rst, "Front-end message types" and "Back-end message types", adjusted where
/// every real peer differs from the text (each such case says so). The codec checks these from the
/// header alone, before any payload is read or allocated.
/// </summary>
public static class VhostUserPayloadRules
{
    private static readonly VhostUserPayloadRule s_memTable = VhostUserPayloadRule.Range(
        VhostUserMemoryTable.PayloadSize(1),
        VhostUserMemoryTable.MaxPayloadSize,
        VhostUserMemoryRegion.Size);

    private static readonly VhostUserPayloadRule s_config =
        VhostUserPayloadRule.Range(VhostUserConfig.HeaderSize, VhostUserConfig.MaxPayloadSize);

    // Spec fields sum to 20; QEMU, libvhost-user and rust-vmm send sizeof = 24 (see VhostUserInflight).
    private static readonly VhostUserPayloadRule s_inflight =
        VhostUserPayloadRule.Range(VhostUserInflight.SpecSize, VhostUserInflight.Size, VhostUserInflight.Size - VhostUserInflight.SpecSize);

    /// <summary>
    /// GET_SHMEM_CONFIG reply: nregions u32, padding u32, then up to 256 u64 sizes. QEMU's struct
    /// carries all 256 (2056 bytes); a shorter array of whole u64s is accepted too.
    /// </summary>
    public const int MaxShmemRegions = 256;

    private static readonly VhostUserPayloadRule s_shmemConfig = VhostUserPayloadRule.Range(8, 8 + (MaxShmemRegions * 8), 8);

    /// <summary>Payload of a front-end request as it arrives at the back-end.</summary>
    public static VhostUserPayloadRule ForRequest(VhostUserRequest request) => request switch
    {
        VhostUserRequest.GET_FEATURES => VhostUserPayloadRule.Empty,
        VhostUserRequest.SET_FEATURES => VhostUserPayloadRule.U64,
        VhostUserRequest.SET_OWNER => VhostUserPayloadRule.Empty,
        VhostUserRequest.RESET_OWNER => VhostUserPayloadRule.Empty,
        VhostUserRequest.SET_MEM_TABLE => s_memTable,

        // The spec says u64; with LOG_SHMFD every peer sends the 16-byte log description, so both.
        VhostUserRequest.SET_LOG_BASE => VhostUserPayloadRule.Range(VhostUserU64.Size, VhostUserLog.Size, 8),
        VhostUserRequest.SET_LOG_FD => VhostUserPayloadRule.Empty,
        VhostUserRequest.SET_VRING_NUM => VhostUserPayloadRule.Exact(VhostUserVringState.Size),
        VhostUserRequest.SET_VRING_ADDR => VhostUserPayloadRule.Exact(VhostUserVringAddr.Size),
        VhostUserRequest.SET_VRING_BASE => VhostUserPayloadRule.Exact(VhostUserVringState.Size),
        VhostUserRequest.GET_VRING_BASE => VhostUserPayloadRule.Exact(VhostUserVringState.Size),
        VhostUserRequest.SET_VRING_KICK => VhostUserPayloadRule.U64,
        VhostUserRequest.SET_VRING_CALL => VhostUserPayloadRule.U64,
        VhostUserRequest.SET_VRING_ERR => VhostUserPayloadRule.U64,
        VhostUserRequest.GET_PROTOCOL_FEATURES => VhostUserPayloadRule.Empty,
        VhostUserRequest.SET_PROTOCOL_FEATURES => VhostUserPayloadRule.U64,
        VhostUserRequest.GET_QUEUE_NUM => VhostUserPayloadRule.Empty,
        VhostUserRequest.SET_VRING_ENABLE => VhostUserPayloadRule.Exact(VhostUserVringState.Size),
        VhostUserRequest.SEND_RARP => VhostUserPayloadRule.U64,
        VhostUserRequest.NET_SET_MTU => VhostUserPayloadRule.U64,
        VhostUserRequest.SET_BACKEND_REQ_FD => VhostUserPayloadRule.Empty,
        VhostUserRequest.IOTLB_MSG => VhostUserPayloadRule.Exact(VhostUserIotlbMsg.Size),
        VhostUserRequest.SET_VRING_ENDIAN => VhostUserPayloadRule.Exact(VhostUserVringState.Size),
        VhostUserRequest.GET_CONFIG => s_config,
        VhostUserRequest.SET_CONFIG => s_config,

        // "crypto session description" is device-specific and not laid out by the spec.
        VhostUserRequest.CREATE_CRYPTO_SESSION => VhostUserPayloadRule.Any,
        VhostUserRequest.CLOSE_CRYPTO_SESSION => VhostUserPayloadRule.U64,
        VhostUserRequest.POSTCOPY_ADVISE => VhostUserPayloadRule.Empty,
        VhostUserRequest.POSTCOPY_LISTEN => VhostUserPayloadRule.Empty,
        VhostUserRequest.POSTCOPY_END => VhostUserPayloadRule.Empty,
        VhostUserRequest.GET_INFLIGHT_FD => s_inflight,
        VhostUserRequest.SET_INFLIGHT_FD => s_inflight,
        VhostUserRequest.GPU_SET_SOCKET => VhostUserPayloadRule.Empty,
        VhostUserRequest.RESET_DEVICE => VhostUserPayloadRule.Empty,
        VhostUserRequest.VRING_KICK => VhostUserPayloadRule.Exact(VhostUserVringState.Size),
        VhostUserRequest.GET_MAX_MEM_SLOTS => VhostUserPayloadRule.Empty,

        // The spec's "request payload: N/A" for ADD/REM_MEM_REG contradicts its own prose ("The
        // message payload contains a memory region descriptor struct"); the prose is what peers do.
        VhostUserRequest.ADD_MEM_REG => VhostUserPayloadRule.Exact(VhostUserSingleMemoryRegion.Size),
        VhostUserRequest.REM_MEM_REG => VhostUserPayloadRule.Exact(VhostUserSingleMemoryRegion.Size),
        VhostUserRequest.SET_STATUS => VhostUserPayloadRule.U64,
        VhostUserRequest.GET_STATUS => VhostUserPayloadRule.Empty,
        VhostUserRequest.GET_SHARED_OBJECT => VhostUserPayloadRule.Exact(VhostUserShared.Size),
        VhostUserRequest.SET_DEVICE_STATE_FD => VhostUserPayloadRule.Exact(VhostUserDeviceStateTransfer.Size),
        VhostUserRequest.CHECK_DEVICE_STATE => VhostUserPayloadRule.Empty,
        VhostUserRequest.GET_SHMEM_CONFIG => VhostUserPayloadRule.Empty,
        _ => VhostUserPayloadRule.Any,
    };

    /// <summary>
    /// Payload of the back-end's reply to <paramref name="request"/>. Requests without a reply body
    /// of their own are answered, when NEED_REPLY asks, by the REPLY_ACK u64 (vhost-user.rst,
    /// "VHOST_USER_PROTOCOL_F_REPLY_ACK").
    /// </summary>
    public static VhostUserPayloadRule ForReply(VhostUserRequest request) => request switch
    {
        VhostUserRequest.GET_VRING_BASE => VhostUserPayloadRule.Exact(VhostUserVringState.Size),

        // Either the REPLY_ACK u64 (8 bytes) or, in postcopy, the back-end's mapping bases: a
        // memory table (8 + n*32) or a single region (8 + 32). Both fit 8 + k*32.
        VhostUserRequest.SET_MEM_TABLE => VhostUserPayloadRule.Range(
            VhostUserU64.Size, VhostUserMemoryTable.MaxPayloadSize, VhostUserMemoryRegion.Size),
        VhostUserRequest.ADD_MEM_REG => VhostUserPayloadRule.Range(
            VhostUserU64.Size, VhostUserSingleMemoryRegion.Size, VhostUserMemoryRegion.Size),

        // "vhost-user back-end uses zero length of payload to indicate an error"; otherwise the
        // reply must match the request's size, which ValidateReplyHeader's sized overload checks.
        VhostUserRequest.GET_CONFIG => VhostUserPayloadRule.Range(0, VhostUserConfig.MaxPayloadSize),
        VhostUserRequest.CREATE_CRYPTO_SESSION => VhostUserPayloadRule.Any,

        // The spec's "reply payload: N/A" for GET_INFLIGHT_FD is wrong: the back-end answers with
        // the inflight description and the fd, and QEMU reads exactly that.
        VhostUserRequest.GET_INFLIGHT_FD => s_inflight,

        // The answer is the userfaultfd in the ancillary data; QEMU sends no body, libvhost-user a u64.
        VhostUserRequest.POSTCOPY_ADVISE => VhostUserPayloadRule.Range(0, VhostUserU64.Size, VhostUserU64.Size),

        // The spec gives SET_LOG_BASE no reply, yet QEMU waits for one when LOG_SHMFD is acked
        // (and ignores its body): libvhost-user answers with 8 bytes, DPDK with none.
        VhostUserRequest.SET_LOG_BASE => VhostUserPayloadRule.Range(0, VhostUserU64.Size, VhostUserU64.Size),

        // The dma-buf fd travels in the ancillary data; accept an empty body or a u64 status.
        VhostUserRequest.GET_SHARED_OBJECT => VhostUserPayloadRule.Range(0, VhostUserU64.Size, VhostUserU64.Size),
        VhostUserRequest.GET_SHMEM_CONFIG => s_shmemConfig,
        _ => VhostUserPayloadRule.U64,
    };

    /// <summary>Payload of a back-end request as it arrives at the front-end.</summary>
    public static VhostUserPayloadRule ForBackendRequest(VhostUserBackendRequest request) => request switch
    {
        VhostUserBackendRequest.IOTLB_MSG => VhostUserPayloadRule.Exact(VhostUserIotlbMsg.Size),

        // "request payload: N/A", but rust-vmm back-ends send a zero u64 and QEMU ignores the body.
        VhostUserBackendRequest.CONFIG_CHANGE_MSG => VhostUserPayloadRule.Range(0, VhostUserU64.Size, VhostUserU64.Size),
        VhostUserBackendRequest.VRING_HOST_NOTIFIER_MSG => VhostUserPayloadRule.Exact(VhostUserVringArea.Size),
        VhostUserBackendRequest.VRING_CALL => VhostUserPayloadRule.Exact(VhostUserVringState.Size),
        VhostUserBackendRequest.VRING_ERR => VhostUserPayloadRule.Exact(VhostUserVringState.Size),
        VhostUserBackendRequest.SHARED_OBJECT_ADD => VhostUserPayloadRule.Exact(VhostUserShared.Size),
        VhostUserBackendRequest.SHARED_OBJECT_REMOVE => VhostUserPayloadRule.Exact(VhostUserShared.Size),
        VhostUserBackendRequest.SHARED_OBJECT_LOOKUP => VhostUserPayloadRule.Exact(VhostUserShared.Size),
        VhostUserBackendRequest.SHMEM_MAP => VhostUserPayloadRule.Exact(VhostUserMMap.Size),
        VhostUserBackendRequest.SHMEM_UNMAP => VhostUserPayloadRule.Exact(VhostUserMMap.Size),
        _ => VhostUserPayloadRule.Any,
    };

    /// <summary>
    /// Payload of the front-end's reply to a back-end request: always the u64 status (REPLY_ACK, or
    /// SHARED_OBJECT_LOOKUP's "dmabuf fd and u64").
    /// </summary>
    public static VhostUserPayloadRule ForBackendReply(VhostUserBackendRequest request) => VhostUserPayloadRule.U64;
}
