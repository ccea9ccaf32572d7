namespace Vmm.VhostUser.Protocol;

/// <summary>
/// Back-end → front-end request codes, sent on the channel set up by
/// <see cref="VhostUserRequest.SET_BACKEND_REQ_FD"/> (vhost-user.rst, "Back-end message types").
/// The spec's previous names used <c>SLAVE_</c> where it now says <c>BACKEND_</c>; the values did not change.
/// </summary>
/// <remarks>Unknown values are representable; never gate on <see cref="Enum.IsDefined(Type, object)"/>.</remarks>
public enum VhostUserBackendRequest : uint
{
    IOTLB_MSG = 1,
    CONFIG_CHANGE_MSG = 2,
    VRING_HOST_NOTIFIER_MSG = 3,
    VRING_CALL = 4,
    VRING_ERR = 5,
    SHARED_OBJECT_ADD = 6,
    SHARED_OBJECT_REMOVE = 7,
    SHARED_OBJECT_LOOKUP = 8,

    /// <summary>Added with <see cref="VhostUserProtocolFeatures.SHMEM"/> (bit 20), a recent addition to the spec.</summary>
    SHMEM_MAP = 9,

    /// <summary>Added with <see cref="VhostUserProtocolFeatures.SHMEM"/> (bit 20), a recent addition to the spec.</summary>
    SHMEM_UNMAP = 10,
}
