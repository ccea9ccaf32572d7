using Vmm.Core.Events;
using Vmm.Virtio.Queues;

namespace Vmm.VhostUser.Backend;

/// <summary>
/// What the front-end told the back-end about one ring, and where the ring stands
/// (vhost-user.rst, "Ring states": stopped, started but disabled, started and enabled).
/// </summary>
internal sealed class BackendVring : IDisposable
{
    private EventFd? _privateKick;
    private int _errorSignalFailed;

    public BackendVring(int index)
    {
        Index = index;
        Call = new CallInterruptLine(index);
    }

    public int Index { get; }

    /// <summary>SET_VRING_NUM: the queue size; zero until set.</summary>
    public ushort Size { get; set; }

    /// <summary>SET_VRING_ADDR, in front-end user addresses.</summary>
    public ulong DescriptorUserAddress { get; set; }

    public ulong AvailableUserAddress { get; set; }

    public ulong UsedUserAddress { get; set; }

    public bool HasAddresses { get; set; }

    /// <summary>
    /// SET_VRING_ADDR's log_guest_addr when its flags have VHOST_VRING_F_LOG: where the log
    /// counts the used ring's first byte. Null when the ring's writes are not to be logged.
    /// </summary>
    public ulong? LogGuestAddress { get; set; }

    /// <summary>Where this ring's queue marks the pages it writes; the session sets its target.</summary>
    public VirtqueueDirtyLog DirtyLog { get; } = new();

    /// <summary>SET_VRING_BASE's num, kept raw: the ring kind decides how to read it.</summary>
    public uint Base { get; set; }

    /// <summary>The kick eventfd (null with NOFD: the ring is polled).</summary>
    public EventFd? Kick { get; private set; }

    /// <summary>Set by SET_VRING_KICK (with an fd or NOFD); cleared when the ring stops.</summary>
    public bool KickReceived { get; set; }

    /// <summary>
    /// The eventfd the queue worker waits on: the front-end's kick, or with NOFD a private one
    /// that only the back-end signals (the ring is then looked at on start and when polled).
    /// </summary>
    public EventFd WorkerKick => Kick ?? (_privateKick ??= new EventFd());

    public CallInterruptLine Call { get; }

    /// <summary>SET_VRING_ERR: signalled when the device finds the ring broken.</summary>
    public EventFd? Error { get; private set; }

    /// <summary>SET_VRING_ENABLE; true from the start when PROTOCOL_FEATURES was not negotiated.</summary>
    public bool Enabled { get; set; }

    /// <summary>True while the device runs this ring.</summary>
    public bool Running { get; set; }

    /// <summary>
    /// Where the ring stood when the device last stopped it without a GET_VRING_BASE (disable, memory
    /// table change): the next start resumes from here rather than from <see cref="Base"/>.
    /// </summary>
    public VirtqueueState? Resume { get; set; }

    /// <summary>The state GET_VRING_BASE reported, kept so a second GET_VRING_BASE answers the same.</summary>
    public VirtqueueState? Stopped { get; set; }

    public void SetKick(EventFd? kick)
    {
        EventFd? old = Kick;
        Kick = kick;
        KickReceived = true;
        if (!ReferenceEquals(old, kick))
        {
            old?.Dispose();
        }
    }

    public void SetCall(EventFd? call) => Call.Swap(call)?.Dispose();

    public void SetError(EventFd? error)
    {
        Error?.Dispose();
        Error = error;
        _errorSignalFailed = 0;
    }

    /// <summary>
    /// Signals the error eventfd, if any. Never blocks (a saturated counter already tells the
    /// front-end). Returns the errno of a failed write the first time one fails for this fd
    /// (for the caller to log once), 0 otherwise.
    /// </summary>
    public int SignalError()
    {
        EventFd? error = Error;
        if (error is null || error.TrySignal(out int errno) || Interlocked.Exchange(ref _errorSignalFailed, 1) != 0)
        {
            return 0;
        }

        return errno;
    }

    /// <summary>Back to the state of a new connection (the fds are closed).</summary>
    public void Clear()
    {
        Size = 0;
        DescriptorUserAddress = AvailableUserAddress = UsedUserAddress = 0;
        HasAddresses = false;
        LogGuestAddress = null;
        DirtyLog.Set(null, null, null);
        Base = 0;
        Kick?.Dispose();
        Kick = null;
        _privateKick?.Dispose();
        _privateKick = null;
        KickReceived = false;
        SetCall(null);
        SetError(null);
        Enabled = false;
        Running = false;
        Resume = null;
        Stopped = null;
    }

    public void Dispose() => Clear();
}
