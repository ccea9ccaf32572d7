namespace Vmm.Core.Memory;

/// <summary>
/// What <see cref="GuestMemory"/> does with a region received from a peer whose file can still
/// shrink: not a memfd sealed with F_SEAL_SHRINK, and not one that can be sealed now (QEMU's
/// memory-backend-file on /dev/shm or hugetlbfs, a file on disk, a memfd made without
/// MFD_ALLOW_SEALING). The peer can truncate such a file under our mapping at any time.
/// </summary>
public enum UnsealedMemoryPolicy
{
    /// <summary>
    /// Map it under the SIGBUS guard (<see cref="Vmm.Core.Posix.SigbusGuard"/>): a truncation
    /// costs the pages that vanished (they read as zeroes here) and raises
    /// <see cref="GuestMemory.Truncated"/>, so the owner can drop the peer. Refused where the
    /// guard is not available.
    /// </summary>
    Guard,

    /// <summary>Refuse the region (<see cref="GuestMemoryException"/>): only sealed memory is mapped.</summary>
    Refuse,
}
