using Akka.Actor;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.VhostUser.Protocol;
using Akka.Event;

namespace Vmm.VhostUser.Frontend;

/// <summary>Ready: each command either is answered from the model at once or starts its requests (Busy).</summary>
public sealed partial class VhostUserConnectionActor
{
    private void Commands()
    {
        Receive<GetDeviceInfo>(_ => Sender.Tell(_model.Info!));
        Receive<GetDeviceSnapshot>(_ => Sender.Tell(_model.Snapshot));
        Receive<StartQueue>(HandleStartQueue);
        Receive<StopQueue>(HandleStopQueue);
        Receive<ResetDevice>(HandleReset);
        Receive<ReadConfig>(HandleReadConfig);
        Receive<WriteConfig>(HandleWriteConfig);
        Receive<SetDriverStatus>(HandleSetDriverStatus);
        Receive<SaveDeviceState>(HandleSaveDeviceState);
        Receive<LoadDeviceState>(HandleLoadDeviceState);
        Receive<RestoreInflight>(HandleRestoreInflight);
        Receive<ReadInflight>(_ => Sender.Tell(_model.ReadInflight()));
        DirtyLoggingCommands();
    }

    private void HandleStartQueue(StartQueue message)
    {
        if (_model.ValidateStart(message) is { } invalid)
        {
            Sender.Tell(new Status.Failure(invalid));
            return;
        }

        BringUpPlan plan;
        try
        {
            plan = _model.WithDirtyLog(_model.PlanStart(message, Connection, _inflightSent), sendLog: !_logSent);
        }
        catch (Exception e) when (e is ArgumentException or GuestMemoryException or InvalidOperationException)
        {
            Sender.Tell(new Status.Failure(e));
            return;
        }

        VhostUserFrontendConnection connection = Connection;
        IReadOnlyList<VirtqueueCallRouter> routers = CreateQueues(plan);
        IActorRef sender = Sender;
        var queue = new QueueSnapshot(message.Index, message.Resources, message.Features, message.InitialState);
        RunCommand(
            message,
            async ct => new QueueStartDone(sender, queue, await VhostUserBringUp.ExecuteAsync(connection, plan, routers, ct).ConfigureAwait(false)),
            new QueueStartCleanup(message.Index));
    }

    private void HandleStopQueue(StopQueue message)
    {
        if (!_model.Snapshot.Queues.TryGetValue(message.Index, out QueueSnapshot? queue))
        {
            // Not running: the state it stopped with on this connection, if any (IVirtioDevice.StopQueue is safe to call twice).
            Sender.Tell(new QueueStopped(message.Index, _stoppedStates.GetValueOrDefault(message.Index)));
            return;
        }

        VhostUserFrontendConnection connection = Connection;
        bool packed = VhostUserFrontendConnection.IsPacked(queue.Features);
        IActorRef sender = Sender;
        RunCommand(message, async ct => new QueueStopDone(
            sender,
            queue.Index,
            await connection.StopRingAsync(queue.Index, queue.Resources.Memory, queue.Resources.Params, packed, ct).ConfigureAwait(false)));
    }

    private void HandleReset(ResetDevice message)
    {
        VhostUserFrontendConnection connection = Connection;
        QueueSnapshot[] running = [.. _model.Snapshot.Queues.Values];
        bool sendStatus = connection.HasProtocolFeature(VhostUserProtocolFeatures.STATUS) && _model.Snapshot.DriverStatus != 0;
        IActorRef sender = Sender;
        RunCommand(message, async ct =>
        {
            if (connection.HasProtocolFeature(VhostUserProtocolFeatures.RESET_DEVICE))
            {
                await connection.ResetDeviceAsync(ct).ConfigureAwait(false);
            }
            else
            {
                foreach (QueueSnapshot queue in running)
                {
                    await connection.StopRingAsync(
                        queue.Index, queue.Resources.Memory, queue.Resources.Params,
                        VhostUserFrontendConnection.IsPacked(queue.Features), ct).ConfigureAwait(false);
                }
            }

            // QEMU tells the back-end status 0 when it stops the device.
            if (sendStatus)
            {
                await connection.SetStatusAsync(0, ct).ConfigureAwait(false);
            }

            return new ResetDone(sender);
        });
    }

    private void HandleReadConfig(ReadConfig message)
    {
        if (message.Offset < 0 || message.Length < 0)
        {
            Sender.Tell(new Status.Failure(new ArgumentOutOfRangeException(nameof(message), "Negative config offset or length.")));
            return;
        }

        // Served from the config image whenever it covers the range; otherwise one GET_CONFIG for
        // exactly the guest's access.
        if (_model.TryReadConfig(message) is { } cached)
        {
            Sender.Tell(cached);
            return;
        }

        VhostUserFrontendConnection connection = Connection;
        IActorRef sender = Sender;
        RunCommand(message, async ct => new ConfigReadDone(
            sender, new ConfigData(message.Offset, await connection.GetConfigAsync(message.Offset, message.Length, ct).ConfigureAwait(false) ?? [])));
    }

    private void HandleWriteConfig(WriteConfig message)
    {
        VhostUserFrontendConnection connection = Connection;
        if (message.Offset < 0)
        {
            Sender.Tell(new Status.Failure(new ArgumentOutOfRangeException(nameof(message), "Negative config offset.")));
            return;
        }

        if (!connection.HasProtocolFeature(VhostUserProtocolFeatures.CONFIG))
        {
            // Without CONFIG the back-end has no way to take the write: it is dropped, as writes to
            // read-only fields are (IVirtioDevice.WriteConfig).
            Sender.Tell(ConfigWritten.Instance);
            return;
        }

        IActorRef sender = Sender;
        byte[] data = message.Data.ToArray();
        RunCommand(message, async ct =>
        {
            await connection.SetConfigAsync(message.Offset, data, ct).ConfigureAwait(false);
            return new ConfigWriteDone(sender, message.Offset, data);
        });
    }

    private void HandleSetDriverStatus(SetDriverStatus message)
    {
        VhostUserFrontendConnection connection = Connection;
        if (!_model.StatusChanged(message.Status) || !connection.HasProtocolFeature(VhostUserProtocolFeatures.STATUS))
        {
            Sender.Tell(DriverStatusSet.Instance);
            return;
        }

        IActorRef sender = Sender;
        RunCommand(message, async ct =>
        {
            await connection.SetStatusAsync(message.Status, ct).ConfigureAwait(false);
            return new StatusSetDone(sender);
        });
    }

    /// <summary>
    /// SAVE over SET_DEVICE_STATE_FD when DEVICE_STATE was negotiated, else empty bytes. The
    /// back-end refuses while a ring runs, so the VMM stops every queue first (vhost-user.rst,
    /// "Migrating back-end state": the STOPPED phase).
    /// </summary>
    private void HandleSaveDeviceState(SaveDeviceState message)
    {
        VhostUserFrontendConnection connection = Connection;
        IActorRef sender = Sender;
        RunCommand(message, async ct => new DeviceStateDone(
            sender,
            new DeviceStateSaved(connection.HasProtocolFeature(VhostUserProtocolFeatures.DEVICE_STATE)
                ? await connection.SaveDeviceStateAsync(ct).ConfigureAwait(false)
                : [])));
    }

    /// <summary>LOAD over SET_DEVICE_STATE_FD; empty bytes load nothing. Without DEVICE_STATE a non-empty state is an error.</summary>
    private void HandleLoadDeviceState(LoadDeviceState message)
    {
        if (message.State.Length == 0)
        {
            Sender.Tell(DeviceStateLoaded.Instance);
            return;
        }

        VhostUserFrontendConnection connection = Connection;
        if (!connection.HasProtocolFeature(VhostUserProtocolFeatures.DEVICE_STATE))
        {
            Sender.Tell(new Status.Failure(new InvalidOperationException("The saved device state cannot be loaded: the back-end does not offer DEVICE_STATE.")));
            return;
        }

        IActorRef sender = Sender;
        RunCommand(message, async ct =>
        {
            await connection.LoadDeviceStateAsync(message.State, ct).ConfigureAwait(false);
            return new DeviceStateDone(sender, DeviceStateLoaded.Instance);
        });
    }

    /// <summary>A saved inflight region becomes the device's; the next ring start sends it (SET_INFLIGHT_FD) instead of asking for a new one.</summary>
    private void HandleRestoreInflight(RestoreInflight message)
    {
        _model.RestoreInflight(message);
        if (message.Contents.Length > 0)
        {
            _inflightSent = false;
        }

        Sender.Tell(InflightRestored.Instance);
    }

    private void HandleMemoryChanged(MemoryChanged message)
    {
        if (!ReferenceEquals(message.Memory, _model.Snapshot.Memory))
        {
            return;
        }

        // vhost-user.rst, "Memory regions": with CONFIGURE_MEM_SLOTS one ADD_MEM_REG / REM_MEM_REG per
        // change; otherwise the whole table again with SET_MEM_TABLE.
        VhostUserFrontendConnection connection = Connection;
        GuestMemoryChange change = message.Change;
        GuestMemory memory = message.Memory;
        bool growLog = LogTooSmallFor(memory);
        RunCommand(message, async ct =>
        {
            if (!connection.HasProtocolFeature(VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS))
            {
                await connection.SetMemoryTableAsync(memory, ct).ConfigureAwait(false);
            }
            else if (change.Kind == GuestMemoryChangeKind.Added)
            {
                await connection.AddMemoryRegionAsync(change.Region, ct).ConfigureAwait(false);
            }
            else
            {
                await connection.RemoveMemoryRegionAsync(change.Region, ct).ConfigureAwait(false);
            }

            DirtyPageLog? grown = growLog ? VhostUserDirtyLog.CreateFor(memory) : null;
            if (grown is not null)
            {
                try
                {
                    await connection.SetLogBaseAsync(grown, ct).ConfigureAwait(false);
                }
                catch
                {
                    grown.Dispose();
                    throw;
                }
            }

            return new MemoryUpdateDone(grown);
        });
    }

    /// <summary>
    /// CONFIG_CHANGE_MSG from the back-end: read the config again (GET_CONFIG), then the supervisor
    /// raises the device's ConfigChanged and the transport interrupts the guest.
    /// </summary>
    private void HandleBackendConfigChange(BackendConfigChange message)
    {
        VhostUserFrontendConnection connection = Connection;

        // Before reading: a change announced from now on asks for another read.
        connection.ConfigChangeTaken();
        int size = _model.Info?.Config?.Length ?? _options.EffectiveConfigSize;
        if (!connection.HasProtocolFeature(VhostUserProtocolFeatures.CONFIG) || size <= 0)
        {
            Context.Parent.Tell(new ConfigRefreshed(null));
            return;
        }

        RunCommand(message, async ct => new ConfigRefreshDone(await connection.GetConfigAsync(0, size, ct).ConfigureAwait(false)));
    }

    private void HandleBackendChannelNotice(BackendChannelNotice message) =>
        _log.Warning("vhost-user back-end channel: {0}", message.Text);

    /// <summary>Runs a command's requests off the mailbox; the actor is Busy until its typed result (or <see cref="CommandFailed"/>) arrives.</summary>
    private void RunCommand<TDone>(object command, Func<CancellationToken, Task<TDone>> work, QueueStartCleanup? cleanup = null)
        where TDone : notnull
    {
        IActorRef sender = Sender;
        _current = new Envelope(command, sender);
        CancellationToken ct = _shutdown.Token;
        Become(Busy);
        Task.Run(() => work(ct), ct).PipeTo(
            Self,
            success: result => result,
            failure: e => new CommandFailed(sender, e, cleanup));
    }

    #region Messages

    // The typed result of each command, carrying its asker.
    private sealed record QueueStartDone(IActorRef ReplyTo, QueueSnapshot Queue, BringUpResult Result);

    private sealed record QueueStartCleanup(int Index);

    private sealed record QueueStopDone(IActorRef ReplyTo, int Index, VirtqueueState State);

    private sealed record ResetDone(IActorRef ReplyTo);

    private sealed record ConfigReadDone(IActorRef ReplyTo, ConfigData Data);

    private sealed record ConfigWriteDone(IActorRef ReplyTo, int Offset, byte[] Data);

    private sealed record ConfigRefreshDone(byte[]? Config);

    private sealed record StatusSetDone(IActorRef ReplyTo);

    private sealed record DeviceStateDone(IActorRef ReplyTo, object Reply);

    private sealed record MemoryUpdateDone(DirtyPageLog? GrownLog);

    private sealed record CommandFailed(IActorRef ReplyTo, Exception Cause, QueueStartCleanup? Cleanup);

    #endregion
}
