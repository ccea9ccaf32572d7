using Akka.Actor;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.VhostUser.Protocol;
using Akka.Event;

namespace Vmm.VhostUser.Frontend;

/// <summary>Busy: each command's typed result is applied to the model and answered, then the next command runs.</summary>
public sealed partial class VhostUserConnectionActor
{
    private readonly Dictionary<int, VirtqueueState?> _stoppedStates = [];

    private void Results()
    {
        Receive<QueueStartDone>(HandleQueueStarted);
        Receive<QueueStopDone>(HandleQueueStopped);
        Receive<ResetDone>(HandleResetDone);
        Receive<ConfigReadDone>(m => Done(m.ReplyTo, m.Data));
        Receive<ConfigWriteDone>(HandleConfigWritten);
        Receive<ConfigRefreshDone>(HandleConfigRefreshed);
        Receive<StatusSetDone>(m => Done(m.ReplyTo, DriverStatusSet.Instance));
        Receive<DeviceStateDone>(m => Done(m.ReplyTo, m.Reply));
        Receive<MemoryUpdateDone>(m =>
        {
            LogGrown(m.GrownLog);
            Done(ActorRefs.Nobody, null);
        });
        DirtyLoggingResults();
    }

    private void HandleQueueStarted(QueueStartDone message)
    {
        Subscribe(message.Queue.Resources.Memory);

        // The plan sent the inflight region whenever the back-end has INFLIGHT_SHMFD and did not have it yet.
        _inflightSent |= Connection.HasProtocolFeature(VhostUserProtocolFeatures.INFLIGHT_SHMFD);
        LogInflightRefusal(message.Result);
        _logSent |= _model.Snapshot.DirtyLog is not null;

        _stoppedStates.Remove(message.Queue.Index);
        _model.Started(message.Queue, message.Result);
        Done(message.ReplyTo, new QueueStarted(message.Queue.Index));
    }

    private void HandleQueueStopped(QueueStopDone message)
    {
        StopQueueActor(message.Index);
        _stoppedStates[message.Index] = message.State;
        _model.Stopped(message.Index);
        Done(message.ReplyTo, new QueueStopped(message.Index, message.State));
    }

    private void HandleResetDone(ResetDone message)
    {
        StopQueueActors();
        _stoppedStates.Clear();
        _model.Reset(backendKeepsMemory: Connection.HasProtocolFeature(VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS));
        _inflightSent = false;
        _logSent = false;
        if (_model.Snapshot.Memory is null)
        {
            Unsubscribe();
        }

        Done(message.ReplyTo, DeviceReset.Instance);
    }

    private void HandleConfigWritten(ConfigWriteDone message)
    {
        _model.ConfigWritten(message.Offset, message.Data);
        Done(message.ReplyTo, ConfigWritten.Instance);
    }

    private void HandleConfigRefreshed(ConfigRefreshDone message)
    {
        if (message.Config is not null)
        {
            _model.ConfigRefreshed(message.Config);
        }

        Context.Parent.Tell(new ConfigRefreshed(message.Config?.ToArray()));
        Done(ActorRefs.Nobody, null);
    }

    private void Done(IActorRef replyTo, object? reply)
    {
        _current = null;
        if (reply is not null)
        {
            Reply(replyTo, reply);
        }

        BecomeIdle();
    }

    private void HandleCommandFailed(CommandFailed message)
    {
        Exception cause = Unwrap(message.Cause);
        Envelope? current = _current;
        _current = null;
        if (message.Cleanup is { } cleanup)
        {
            StopQueueActor(cleanup.Index);
        }

        if (cause is VhostUserRequestFailedException or InvalidOperationException or ArgumentException or GuestMemoryException &&
            _connection is { IsDead: false })
        {
            // The back-end refused one request (or it was invalid): the connection is intact.
            _log.Warning("vhost-user request failed: {0}", cause.Message);
            Reply(message.ReplyTo, new Status.Failure(cause));
            BecomeIdle();
            return;
        }

        if (VhostUserDeviceSupervisor.IsTransportLost(cause) && current is { Message: IDeviceCommand command })
        {
            // The back-end is gone, not wrong: the command is not failed but handed back, to be
            // served without this connection and replayed by the next one.
            Context.Parent.Tell(new CommandRequeued(Self, command), current.Value.Sender);
        }
        else
        {
            Reply(message.ReplyTo, new Status.Failure(cause));
        }

        FailStash(cause);
        throw cause;
    }
}
