using Vmm.Core.Posix;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Backend;

/// <summary>
/// One SET_DEVICE_STATE_FD transfer: the front-end's pipe written (SAVE) or read to its end
/// (LOAD) on a thread of its own, so that a state bigger than the pipe's buffer cannot block the
/// session. Bounded three ways: the load's size (<see cref="DeviceStateFrame.MaxStateSize"/>), a
/// deadline, and cancellation, which the session uses when a new transfer replaces this one and
/// when it ends. The thread catches everything; the outcome is read by <see cref="Result"/>.
/// </summary>
internal sealed class DeviceStateTransfer : IDisposable
{
    /// <summary>How long <see cref="Dispose"/> waits for the thread after cancelling it (it wakes at once).</summary>
    private static readonly TimeSpan s_cancelWait = TimeSpan.FromSeconds(5);

    private readonly SafeFileDescriptor _fd;
    private readonly byte[]? _frame;
    private readonly TimeSpan _timeout;
    private readonly CancellationTokenSource _cancel;
    private readonly Thread _thread;
    private byte[]? _loaded;
    private Exception? _error;

    private DeviceStateTransfer(VhostUserTransferDirection direction, SafeFileDescriptor fd, byte[]? frame, TimeSpan timeout, CancellationToken session)
    {
        Direction = direction;
        _fd = fd;
        _frame = frame;
        _timeout = timeout;
        _cancel = CancellationTokenSource.CreateLinkedTokenSource(session);
        _thread = new Thread(Run) { IsBackground = true, Name = "vu-device-state" };
    }

    public VhostUserTransferDirection Direction { get; }

    /// <summary>Starts writing <paramref name="frame"/> to <paramref name="fd"/>, which it owns from now on.</summary>
    public static DeviceStateTransfer StartSave(SafeFileDescriptor fd, byte[] frame, TimeSpan timeout, CancellationToken session) =>
        Start(new DeviceStateTransfer(VhostUserTransferDirection.SAVE, fd, frame, timeout, session));

    /// <summary>Starts reading <paramref name="fd"/>, which it owns from now on, to its end.</summary>
    public static DeviceStateTransfer StartLoad(SafeFileDescriptor fd, TimeSpan timeout, CancellationToken session) =>
        Start(new DeviceStateTransfer(VhostUserTransferDirection.LOAD, fd, null, timeout, session));

    /// <summary>
    /// Waits for the transfer to end, for its own deadline at most (the front-end closes its end
    /// before CHECK_DEVICE_STATE, so a transfer that is still running then is one that will not end).
    /// Returns the loaded bytes (empty for a save); throws what the transfer failed with.
    /// </summary>
    public byte[] Result()
    {
        if (!_thread.Join(_timeout + s_cancelWait))
        {
            throw new TimeoutException($"the state transfer did not end within {_timeout.TotalSeconds:0} s");
        }

        return _error is null ? _loaded ?? [] : throw _error;
    }

    /// <summary>Cancels the transfer if it still runs, waits for its thread, closes the fd.</summary>
    public void Dispose()
    {
        _cancel.Cancel();
        _thread.Join(s_cancelWait);
        _cancel.Dispose();
    }

    private static DeviceStateTransfer Start(DeviceStateTransfer transfer)
    {
        transfer._thread.Start();
        return transfer;
    }

    private void Run()
    {
        try
        {
            using (_fd)
            {
                if (_frame is not null)
                {
                    Pipe.WriteAll(_fd, _frame, _timeout, _cancel.Token);
                }
                else
                {
                    _loaded = Pipe.ReadToEnd(_fd, DeviceStateFrame.HeaderSize + DeviceStateFrame.MaxStateSize, _timeout, _cancel.Token);
                }
            }
        }
        catch (Exception e)
        {
            _error = e;
        }
    }
}
