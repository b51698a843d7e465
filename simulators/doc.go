// Package simulators provides PLC simulators for gridseal: a PV inverter, a
// battery system and a breaker/recloser, each answering Modbus/TCP through a
// github.com/simonvetter/modbus server and moving by simple physics on a
// clock. Engineers try policies and approvals against them without hardware.
//
// One Plant answers for several devices behind one address, as a gateway
// does: by default unit 1 is the inverter, unit 2 the battery and unit 3 the
// breaker. Addresses below are 0-based protocol addresses (mbpoll: add -0).
//
// # PV inverter (SunSpec: models 1, 103, 123, 120 and 121)
//
// A SunSpec map from 40000 (Options.InverterLayout moves it, and orders its
// models differently, as another firmware would). Holding registers,
// read-only unless marked RW; the scale factors (SF) are exponents of ten:
//
//	40000-40001  "SunS" marker
//	40002        1 (common model), 40003: 66 (length)
//	40004-40019  manufacturer "gridseal"      40020-40035  model "SIM-PV-100K"
//	40044-40051  version "1.0.0"              40052-40067  serial number
//	40068        device address (unit id)
//	40070        103 (three-phase inverter), 40071: 50 (length)
//	40072        AC current A          40076  A_SF = -1
//	40080-40082  phase voltages V      40083  V_SF = -1
//	40084        AC power W            40085  W_SF = 1 (10 W steps)
//	40086        frequency Hz          40087  Hz_SF = -2
//	40094-40095  lifetime energy Wh (acc32)   40096  WH_SF = 0
//	40101        DC power W            40102  DCW_SF = 1
//	40103        cabinet temperature   40107  Tmp_SF = -1
//	40108        operating state: 1 off, 3 sleeping (night), 4 MPPT, 5 throttled, 8 standby
//	40122        123 (immediate controls), 40123: 24 (length)
//	40126        Conn: 1 connected, 0 disconnected (RW)
//	40127        WMaxLimPct: active-power limit, % of 100 kW rated (RW, 0..100)
//	40131        WMaxLim_Ena: 1 limit enabled (RW)
//	40145        WMaxLimPct_SF = 0
//	40148        120 (nameplate), 40149: 26: DERTyp 4 (PV), WRtg 100 kW (WRtg_SF 3), ...
//	40176        121 (settings), 40177: 30: WMax 100 kW (WMax_SF 3), VRef 230 V,
//	             WGra 20 % WMax/s (the ramp), ECPNomHz 50 Hz, ...
//	40208-40209  end marker 0xFFFF, 0
//
// Output follows a daylight curve (a compressed day; see Options.DayLength)
// capped by the limit, ramping at 20 % of rated power per second.
//
// # Battery system
//
// Native registers: holding registers (RW): 0 power setpoint kW (int16,
// + discharge, − charge, −100..100); 1 mode (0 standby, 1 run); 2 SoC floor
// %; 3 SoC ceiling %. Input registers: 0 SoC in 0.1 %; 1 actual power kW
// (int16); 2 alarms (bit 0 SoC floor reached, bit 1 SoC ceiling reached,
// bit 2 setpoint above rating); 3 capacity kWh; 4 rated power kW; 5 DC
// voltage 0.1 V; 6 temperature 0.1 °C; 7-8 energy charged kWh (uint32); 9-10
// energy discharged kWh (uint32); 11 state (0 standby, 1 charging, 2
// discharging, 3 held at a SoC limit).
//
// And a SunSpec map of the same state from 40000 (Options.BatteryLayout
// moves it): the common model at 40002; model 124 (basic storage controls)
// at 40070: WChaMax 100 kW (WChaMax_SF 3), StorCtl_Mod at 40075 (RW: bit 0
// puts the charge limit InWRte in force, bit 1 the discharge limit OutWRte),
// MinRsvPct 40077 (RW: the SoC floor), ChaState 40078 (SoC, ChaState_SF
// -1), InBatV, ChaSt 40081 (1 off, 2 empty, 3 discharging, 4 charging, 5
// full, 6 holding), OutWRte 40082 and InWRte 40083 (RW, % of the rating,
// InOutWRte_SF -1: 0..1000); model 713 (DER storage capacity) at 40096:
// WHRtg, WHAvail (WH_SF 2), SoC, SoH (Pct_SF -1); the end marker at 40105.
//
// # Breaker / recloser
//
// Coils (write 1 to act, read back 0): 0 close, 1 open (trip), 2 reset
// lockout; coil 3 reclose enabled (RW). Discrete inputs: 0 closed, 1 open,
// 2 fault present, 3 locked out, 4 interlock active, 5 reclose enabled.
// Input registers: 0 trip count, 1 operation count, 2 line current A,
// 3 reclose attempts since the last fault. Holding registers (RW): 0 fault
// injection (1 puts a fault on the line), 1 reclose delay in 0.1 s, 2 maximum
// reclose attempts before lockout. Closing while a fault is present or while
// locked out is refused by the interlock with exception 0x04.
package simulators
