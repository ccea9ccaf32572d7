using Akka.Actor;
using Akka.Event;
using Vmm.Core.Interrupts;

namespace Vmm.Core.Machine;

/// <summary>
/// The VM (DESIGN.md, "The actor tree"): parent of its devices and of the
/// InterruptControllerActor "interrupts". It watches its devices; a device that fails is
/// recorded and forgotten, and the VM keeps running.
/// </summary>
public sealed class VmActor : ReceiveActor
{
    public const string InterruptsName = "interrupts";

    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly IInterruptSink? _sink;
    private readonly Dictionary<string, IActorRef> _devices = [];
    private readonly List<DeviceFailed> _failed = [];
    private IActorRef _interrupts = ActorRefs.Nobody;

    public VmActor(IInterruptSink? sink)
    {
        _sink = sink;
        Receive<AttachDevice>(HandleAttach);
        Receive<DetachDevice>(HandleDetach);
        Receive<DeviceFailed>(HandleDeviceFailed);
        Receive<Terminated>(HandleTerminated);
        Receive<GetDevices>(_ => Sender.Tell(new Devices(new Dictionary<string, IActorRef>(_devices), _failed.ToArray())));
        Receive<GetInterruptController>(_ => Sender.Tell(new InterruptController(_interrupts)));
    }

    public static Props Props(IInterruptSink? sink = null) => Akka.Actor.Props.Create(() => new VmActor(sink));

    protected override void PreStart() =>
        _interrupts = Context.ActorOf(InterruptControllerActor.Props(_sink), InterruptsName);

    /// <summary>
    /// A device's supervisor handles its own faults; one that still throws is stopped rather
    /// than restarted, since a restart would lose what it keeps (its device snapshot).
    /// </summary>
    protected override SupervisorStrategy SupervisorStrategy() =>
        new OneForOneStrategy(e =>
        {
            _log.Error(e, "A VM child failed; stopping it");
            return Directive.Stop;
        });

    private void HandleAttach(AttachDevice message)
    {
        if (message.Name == InterruptsName || _devices.ContainsKey(message.Name))
        {
            Sender.Tell(new Status.Failure(new InvalidOperationException($"A device named '{message.Name}' already exists.")));
            return;
        }

        IActorRef device = Context.ActorOf(message.Props, message.Name);
        Context.Watch(device);
        _devices[message.Name] = device;
        Sender.Tell(new DeviceAttached(message.Name, device));
    }

    private void HandleDetach(DetachDevice message)
    {
        if (_devices.Remove(message.Name, out IActorRef? device))
        {
            Context.Unwatch(device);
            Context.Stop(device);
        }

        Sender.Tell(new DeviceDetached(message.Name));
    }

    private void HandleDeviceFailed(DeviceFailed message)
    {
        _log.Warning("Device {0} failed: {1}", message.Name, message.Reason);
        _failed.Add(message);
    }

    private void HandleTerminated(Terminated message)
    {
        foreach ((string name, IActorRef device) in _devices)
        {
            if (device.Equals(message.ActorRef))
            {
                _devices.Remove(name);
                break;
            }
        }
    }
}
